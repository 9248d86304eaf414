import copy
import logging

import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from rto.data import tokenize as tk
from rto.data.tokenize import (
    encode_completion,
    encode_prompt,
    ensure_pad_token,
    render_completion,
    render_prompt,
    tokenize_all,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)
from rto.errors import ConfigError, DataError, RtoError
from rto.tasks.tokenizer import CHAT_TEMPLATE

BOS, EOS = 1, 2  # ids of <|bos|> and <|eos|> in the tiny tokenizers


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer):
    """The tiny BPE, but adding BOS to every text (like Llama), with a template that also writes BOS."""
    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", BOS)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    assert tok("hi")["input_ids"][0] == BOS  # the fixture really adds BOS
    return tok


# --------------------------------------------------------------------------- the mask boundary


def test_prompt_tokenized_separately_from_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt, completion = "The movie ", "was great"
    # The case this guards against: tokenizing the joined text merges across the boundary.
    assert ids(tok, prompt + completion) != ids(tok, prompt) + ids(tok, completion)

    out = tokenize_sft(tok, {"prompt": prompt, "completion": completion}, max_length=64)
    expected_completion = ids(tok, completion) + [EOS]
    assert out["input_ids"] == ids(tok, prompt) + expected_completion
    mask = out["completion_mask"]
    assert [t for t, m in zip(out["input_ids"], mask) if m] == expected_completion
    assert mask == [0] * len(ids(tok, prompt)) + [1] * len(expected_completion)
    assert out["truncated"] is False


def test_sft_text_format_whole_text_is_completion(tiny_tokenizer, bos_tokenizer):
    out = tokenize_sft(tiny_tokenizer, {"prompt": None, "completion": "Hello world"}, max_length=64)
    assert out["input_ids"] == ids(tiny_tokenizer, "Hello world") + [EOS]
    assert all(out["completion_mask"])
    out = tokenize_sft(bos_tokenizer, {"prompt": None, "completion": "Hello world"}, max_length=64)
    assert out["input_ids"] == [BOS] + ids(bos_tokenizer, "Hello world") + [EOS]
    assert out["completion_mask"] == [0] + [1] * (len(out["input_ids"]) - 1)


# --------------------------------------------------------------------------- special tokens


def test_eos_appended_exactly_once(tiny_tokenizer):
    a = encode_completion(tiny_tokenizer, "hello")
    b = encode_completion(tiny_tokenizer, "hello<|eos|>")
    assert a == b == ids(tiny_tokenizer, "hello") + [EOS]
    assert a.count(EOS) == 1


def test_no_eos_token_is_a_clear_error():
    class NoEos:
        eos_token_id = None
        name_or_path = "my-tok"

    with pytest.raises(RtoError, match="'my-tok' has no eos_token"):
        encode_completion(NoEos(), "hi")


def test_string_prompt_gets_tokenizer_bos_once(bos_tokenizer):
    assert encode_prompt(bos_tokenizer, "Hello") == [BOS] + ids(bos_tokenizer, "Hello")
    # text already starting with the BOS string: no second BOS
    assert encode_prompt(bos_tokenizer, "<|bos|>Hello") == [BOS] + ids(bos_tokenizer, "Hello")
    # the completion never gets a BOS
    assert BOS not in encode_completion(bos_tokenizer, " world")


def test_chat_template_with_bos_is_not_duplicated(bos_tokenizer):
    prompt = [U("hi")]
    text = render_prompt(bos_tokenizer, prompt)
    assert text == "<|bos|><|user|>hi<|eos|><|assistant|>"
    p = encode_prompt(bos_tokenizer, prompt)
    assert p[0] == BOS and p.count(BOS) == 1
    out = tokenize_sft(bos_tokenizer, {"prompt": prompt, "completion": [A("hello")]}, max_length=64)
    assert out["input_ids"].count(BOS) == 1
    assert out["input_ids"] == ids(bos_tokenizer, "<|bos|><|user|>hi<|eos|><|assistant|>hello<|eos|>")


def test_chat_template_prompt_and_completion(tiny_chat_tokenizer):
    tok = tiny_chat_tokenizer
    prompt, completion = [U("hi")], [A("hello")]
    assert render_prompt(tok, prompt) == "<|user|>hi<|eos|><|assistant|>"
    assert render_completion(tok, prompt, completion) == "hello<|eos|>"
    out = tokenize_sft(tok, {"prompt": prompt, "completion": completion}, max_length=64)
    n_prompt = len(ids(tok, "<|user|>hi<|eos|><|assistant|>"))
    assert out["input_ids"] == ids(tok, "<|user|>hi<|eos|><|assistant|>hello<|eos|>")
    assert out["input_ids"][-1] == EOS and out["input_ids"][-2] != EOS  # template EOS, not doubled
    assert out["completion_mask"] == [0] * n_prompt + [1] * (len(out["input_ids"]) - n_prompt)


def test_multi_turn_only_last_assistant_turn_is_learned(tiny_chat_tokenizer):
    tok = tiny_chat_tokenizer
    ex = {"prompt": [U("a"), A("b"), U("c")], "completion": [A("d")]}
    out = tokenize_sft(tok, ex, max_length=64)
    learned = [t for t, m in zip(out["input_ids"], out["completion_mask"]) if m]
    assert learned == ids(tok, "d<|eos|>")


def test_template_trailing_whitespace_after_eos_is_dropped(tiny_chat_tokenizer):
    tok = copy.deepcopy(tiny_chat_tokenizer)
    tok.chat_template = CHAT_TEMPLATE.replace("'<|eos|>'", "'<|eos|>\\n'")
    assert render_completion(tok, [U("hi")], [A("yo")]) == "yo<|eos|>"


def test_template_not_prefix_consistent(tiny_chat_tokenizer):
    tok = copy.deepcopy(tiny_chat_tokenizer)
    tok.chat_template = CHAT_TEMPLATE.replace("{{ '<|assistant|>' }}", "{{ '<|assistant|> ' }}")
    with pytest.raises(DataError, match="not prefix-consistent"):
        render_completion(tok, [U("hi")], [A("yo")])


def test_no_chat_template_fallback_warns_once(tiny_tokenizer, caplog):
    tk._warned_no_template.discard(id(tiny_tokenizer))
    with caplog.at_level(logging.WARNING, logger="rto.data.tokenize"):
        assert render_prompt(tiny_tokenizer, [U("hi")]) == "user: hi\nassistant: "
        assert render_completion(tiny_tokenizer, [U("hi")], [A("yo")]) == "yo\n"
    assert sum("no chat template" in r.message for r in caplog.records) == 1


def test_prompt_ending_with_whitespace_warns_once(tiny_tokenizer, tiny_chat_tokenizer, caplog):
    tk._warned_trailing_space.clear()
    with caplog.at_level(logging.WARNING, logger="rto.data.tokenize"):
        encode_prompt(tiny_tokenizer, "The movie")
        encode_prompt(tiny_chat_tokenizer, [U("hi")])  # a template's own ending is not the user's text
        assert not caplog.records
        # the space stays a token of its own: the prompt's ids are not a prefix of the joined text's
        joined = tiny_tokenizer("The movie was", add_special_tokens=False)["input_ids"]
        ids = encode_prompt(tiny_tokenizer, "The movie ")
        assert joined[: len(ids)] != ids
        tokenize_sft(tiny_tokenizer, {"prompt": "I watched\n", "completion": "it"}, max_length=64)
    warned = [r for r in caplog.records if "ends with whitespace" in r.message]
    assert len(warned) == 1 and "The movie " in warned[0].getMessage()


def test_conversational_completion_needs_conversational_prompt(tiny_chat_tokenizer):
    with pytest.raises(DataError, match="needs a conversational prompt"):
        render_completion(tiny_chat_tokenizer, "hi", [A("yo")])


# --------------------------------------------------------------------------- truncation


def _sft(tok, prompt, completion, max_length, overflow="truncate"):
    return tokenize_sft(tok, {"prompt": prompt, "completion": completion}, max_length, overflow)


def test_sft_truncation_cuts_completion_tail_when_prompt_is_short(tiny_tokenizer):
    tok = tiny_tokenizer
    p = ids(tok, "Hi")
    c = ids(tok, " The movie was great and the acting was wonderful.") + [EOS]
    max_length = len(p) + 5
    assert len(p) <= max_length // 2 and len(p) + len(c) > max_length
    out = _sft(tok, "Hi", " The movie was great and the acting was wonderful.", max_length)
    assert out["input_ids"] == p + c[:5]
    assert out["completion_mask"] == [0] * len(p) + [1] * 5
    assert out["truncated"] is True
    assert _sft(tok, "Hi", " The movie was great and the acting was wonderful.", max_length, "drop") is None


def test_sft_long_prompt_keeps_its_last_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = "The movie was great and the acting was wonderful."
    p, c = ids(tok, prompt), ids(tok, " I hated the plot") + [EOS]
    max_length = 10
    assert len(p) > max_length and len(c) > max_length // 2
    out = _sft(tok, prompt, " I hated the plot", max_length)
    # prompt keeps max(10 - len(c), 5) = 5 of its last tokens, the completion the other 5
    assert out["input_ids"] == p[-5:] + c[:5]
    assert out["completion_mask"] == [0] * 5 + [1] * 5

    short = _sft(tok, prompt, " I", max_length)  # a short completion is kept whole
    c_short = ids(tok, " I") + [EOS]
    assert short["input_ids"] == p[-(max_length - len(c_short)) :] + c_short


def test_left_truncated_prompt_keeps_bos(bos_tokenizer):
    tok = bos_tokenizer
    prompt = "The movie was great and the acting was wonderful."
    p = encode_prompt(tok, prompt)
    out = _sft(tok, prompt, " I hated the plot", 10)
    assert out["input_ids"][:5] == [BOS] + p[-4:]
    assert sum(1 - m for m in out["completion_mask"]) == 5


def test_preference_tokenization_and_truncation(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = {"prompt": "The movie ", "chosen": "was great", "rejected": "was boring and awful"}
    out = tokenize_preference(tok, ex, max_length=64)
    p = ids(tok, "The movie ")
    ch, rj = ids(tok, "was great") + [EOS], ids(tok, "was boring and awful") + [EOS]
    assert out["chosen_input_ids"] == p + ch and out["rejected_input_ids"] == p + rj
    assert out["chosen_completion_mask"] == [0] * len(p) + [1] * len(ch)
    assert out["rejected_completion_mask"] == [0] * len(p) + [1] * len(rj)
    assert out["prompt_length"] == len(p) and out["truncated"] is False

    limit = len(p) + len(ch)  # chosen fits exactly, rejected is longer
    assert len(p) <= limit // 2 and len(rj) > len(ch)
    cut = tokenize_preference(tok, ex, max_length=limit)
    assert cut["chosen_input_ids"] == p + ch
    assert cut["rejected_input_ids"] == p + rj[: len(ch)]
    assert cut["prompt_length"] == len(p) and cut["truncated"] is True
    assert tokenize_preference(tok, ex, max_length=limit, overflow="drop") is None


def test_preference_conversational(tiny_chat_tokenizer):
    tok = tiny_chat_tokenizer
    ex = {"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("go")]}
    out = tokenize_preference(tok, ex, max_length=64)
    n = len(ids(tok, "<|user|>hi<|eos|><|assistant|>"))
    assert out["prompt_length"] == n
    assert out["chosen_input_ids"][n:] == ids(tok, "hello<|eos|>")
    assert out["rejected_input_ids"][n:] == ids(tok, "go<|eos|>")


def test_prompt_truncation_keeps_last_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "The movie was great and the acting was wonderful."
    full = ids(tok, text)
    out = tokenize_prompt(tok, {"prompt": text, "meta": {"id": 7}}, max_prompt_length=4)
    assert out["input_ids"] == full[-4:]
    assert out["prompt"] == text and out["meta"] == {"id": 7} and out["truncated"] is True
    assert tokenize_prompt(tok, {"prompt": text}, max_prompt_length=4, overflow="drop") is None
    whole = tokenize_prompt(tok, {"prompt": text}, max_prompt_length=100)
    assert whole["input_ids"] == full and whole["meta"] == {} and whole["truncated"] is False


def test_bad_overflow_and_max_length(tiny_tokenizer):
    with pytest.raises(ConfigError, match="overflow must be 'truncate' or 'drop'"):
        _sft(tiny_tokenizer, "a", "b", 16, overflow="cut")
    with pytest.raises(ConfigError, match="max_length must be at least 2"):
        _sft(tiny_tokenizer, "a", "b", 1)


# --------------------------------------------------------------------------- tokenize_all


def test_tokenize_all_counts(tiny_tokenizer):
    examples = [
        {"prompt": "Hi", "completion": " yes"},
        {"prompt": "Hi", "completion": " The movie was great and the acting was wonderful."},
        {"prompt": "Hi", "completion": " no"},
    ]
    kept, counts = tokenize_all(tokenize_sft, tiny_tokenizer, examples, "d.jsonl", max_length=8)
    assert counts == {"total": 3, "truncated": 1, "dropped": 0}
    assert len(kept) == 3 and all("truncated" not in k for k in kept)
    assert max(len(k["input_ids"]) for k in kept) == 8

    kept, counts = tokenize_all(
        tokenize_sft, tiny_tokenizer, examples, "d.jsonl", max_length=8, overflow="drop"
    )
    assert counts == {"total": 3, "truncated": 0, "dropped": 1}
    assert len(kept) == 2


def test_tokenize_all_empty_after_filtering(tiny_tokenizer):
    examples = [{"prompt": "Hi", "completion": " The movie was great and the acting was wonderful."}]
    with pytest.raises(DataError) as e:
        tokenize_all(tokenize_sft, tiny_tokenizer, examples, "d.jsonl", max_length=4, overflow="drop")
    msg = str(e.value)
    assert "d.jsonl: empty dataset after filtering" in msg
    assert "1 examples, 1 dropped" in msg and "max_length=4" in msg


def test_tokenize_all_names_failing_example(tiny_chat_tokenizer):
    examples = [{"prompt": [U("a")], "completion": [A("b")]}, {"prompt": "x", "completion": [A("b")]}]
    with pytest.raises(DataError, match=r"sft\.json: example 2: a conversational completion"):
        tokenize_all(tokenize_sft, tiny_chat_tokenizer, examples, "sft.json", max_length=32)


# --------------------------------------------------------------------------- pad token


def _word_tokenizer(**specials):
    vocab = {"a": 0, "b": 1, "<eos>": 2, "<unk>": 3}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), **specials
    )


def test_ensure_pad_token_keeps_distinct_pad(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    assert ensure_pad_token(tok) is False
    assert tok.pad_token == "<|pad|>"


def test_ensure_pad_token_uses_unk():
    tok = _word_tokenizer(eos_token="<eos>", unk_token="<unk>")
    assert tok.pad_token is None
    assert ensure_pad_token(tok) is False
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id


def test_ensure_pad_token_replaces_pad_equal_to_eos_by_new_token():
    tok = _word_tokenizer(eos_token="<eos>", pad_token="<eos>")
    n = len(tok)
    assert ensure_pad_token(tok) is True  # the caller must resize embeddings
    assert tok.pad_token == "<|rto_pad|>" and tok.pad_token_id == n and len(tok) == n + 1
    assert tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize(
    ("specials", "pad"), [({"unk_token": "<unk>"}, "<unk>"), ({"pad_token": "<eos>"}, "<|rto_pad|>")]
)
def test_loading_a_tokenizer_applies_the_same_pad_rule(tmp_path, specials, pad):
    """rto.models.load_tokenizer (what every stage uses) and ensure_pad_token choose the same pad."""
    from rto.models import load_tokenizer

    _word_tokenizer(eos_token="<eos>", **specials).save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == pad and tok.pad_token_id != tok.eos_token_id
