"""Render and tokenize examples so that loss masks line up with the completion exactly.

Two rules carry the correctness of everything here:

1. The prompt and the completion are tokenized SEPARATELY and their ids concatenated. BPE
   merges can cross the prompt/completion boundary ("The movie " + "was" tokenizes differently
   from "The movie was"), so masking by len(tokenize(prompt)) inside tokenize(prompt+completion)
   can shift the mask by a token. With separate tokenization the mask is exact by construction,
   and the prompt ids used in training are the same ids used as the generation prompt in PPO.
   The price: a string prompt that ends with whitespace ("The movie ") keeps that space as a token
   of its own, where the joined text would merge it into the next word (" was"); a warning is
   logged once. Put such a space at the start of the completion instead.
2. Special tokens are added exactly once. A prompt gets the special tokens the tokenizer puts in
   FRONT of a text (its BOS, if it adds one) unless the rendered text already starts with the
   BOS string, as many chat templates do; then nothing is added (no "<s><s>"). A trailing EOS
   some tokenizers append is never kept on a prompt: a prompt must not end the sequence. The
   completion is tokenized without special tokens and gets exactly one EOS at its end.

Truncation policy (overflow="truncate"); overflow="drop" instead returns None for any example
that does not fit:

- SFT / preference: when prompt + completion exceed `max_length`, the completion is cut from
  the right (its EOS is then lost, as in any truncated sample). A prompt of at most
  ``max_length // 2`` tokens is never cut; a longer one keeps only its LAST
  ``max(max_length - len(completion), max_length // 2)`` tokens. So every kept example has at
  least ``max_length - max_length // 2`` completion tokens (or its whole completion) to learn
  from, even when the prompt alone exceeds `max_length`.
  For preferences the longer completion decides the prompt's share; both completions are cut to
  the same budget, and ``prompt_length`` is the kept prompt length.
- Prompts for generation: only the LAST `max_prompt_length` tokens are kept (the end of the
  prompt is what the response continues from).
- Whenever a prompt is cut from the left and starts with BOS, the BOS is kept in front.
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from rto.errors import ConfigError, DataError, RtoError

logger = logging.getLogger(__name__)

_warned_no_template: set[int] = set()
_warned_trailing_space: set[str] = set()


# --------------------------------------------------------------------------- rendering


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The prompt as text, ending where the model's reply starts.

    Strings are returned unchanged. Conversations use the tokenizer's chat template with the
    generation prompt; a tokenizer without a chat template falls back to "role: content" lines
    followed by "assistant: " (a warning is logged once per tokenizer).
    """
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return _apply_template(tokenizer, list(prompt), add_generation_prompt=True)
    _warn_no_template(tokenizer)
    return _plain_chat(prompt) + "assistant: "


def render_completion(tokenizer, prompt: str | list[dict] | None, completion: str | list[dict]) -> str:
    """The completion as text, exactly what follows `render_prompt(prompt)` in the full sample.

    Strings are returned unchanged. For conversations the whole exchange is rendered and the
    rendered prompt cut off its front, so the completion carries the template's end-of-turn
    markup. Whitespace the template puts after a final EOS string is dropped (EOS ends the
    sequence). A template that renders the prompt differently inside the full conversation
    (not prefix-consistent) is a DataError: the mask could not be placed reliably.
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(prompt, (list, tuple)):
        raise DataError("a conversational completion needs a conversational prompt (a list of messages)")
    prompt_text = render_prompt(tokenizer, prompt)
    messages = list(prompt) + list(completion)
    if getattr(tokenizer, "chat_template", None):
        full = _apply_template(tokenizer, messages, add_generation_prompt=False)
    else:
        full = _plain_chat(messages)
    if not full.startswith(prompt_text):
        raise DataError(
            "the chat template is not prefix-consistent: the prompt rendered with add_generation_prompt=True "
            f"({prompt_text[-60:]!r} at its end) is not the start of the full conversation rendered with the "
            f"reply ({full[: len(prompt_text) + 20][-80:]!r}); use a template whose generation prompt matches "
            "how it renders assistant turns"
        )
    text = full[len(prompt_text) :]
    eos = tokenizer.eos_token
    if eos and text.rstrip().endswith(eos):
        text = text.rstrip()
    return text


def _plain_chat(messages) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except Exception as e:  # jinja raises its own errors (e.g. "roles must alternate")
        raise DataError(f"the chat template failed on this conversation: {type(e).__name__}: {e}") from None


def _warn_no_template(tokenizer) -> None:
    if id(tokenizer) not in _warned_no_template:
        _warned_no_template.add(id(tokenizer))
        logger.warning(
            "tokenizer %s has no chat template; conversations are rendered as 'role: content' lines "
            "followed by 'assistant: '",
            getattr(tokenizer, "name_or_path", type(tokenizer).__name__) or type(tokenizer).__name__,
        )


# --------------------------------------------------------------------------- encoding


def special_prefix(tokenizer, text: str) -> list[int]:
    """The special ids the tokenizer puts in front of `text` (its BOS), or [] if `text` starts with BOS."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        return []
    with_special = tokenizer(text, add_special_tokens=True)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    # An EOS the tokenizer appends is not a prefix; but BOS may equal EOS (OPT, some GPT-2 setups).
    front = set(tokenizer.all_special_ids) - ({tokenizer.eos_token_id} - {tokenizer.bos_token_id})

    def leading(ids: list[int]) -> int:
        n = 0
        while n < len(ids) and ids[n] in front:
            n += 1
        return n

    return with_special[: max(leading(with_special) - leading(plain), 0)]


def _warn_trailing_whitespace(prompt: str) -> None:
    if prompt[-1:].isspace() and "warned" not in _warned_trailing_space:
        _warned_trailing_space.add("warned")
        logger.warning(
            "a prompt ends with whitespace (%r; further ones are not reported): prompt and completion are "
            "tokenized separately, so that whitespace stays a token of its own instead of merging into the "
            "completion's first word as in the joined text; the model then continues from a token boundary "
            "it rarely saw. Move the whitespace to the start of the completion",
            prompt[-40:],
        )


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Prompt ids: the rendered prompt plus the tokenizer's leading special tokens, never a double BOS.
    A string prompt that ends with whitespace is warned about once per process (see the module docstring)."""
    if isinstance(prompt, str):
        _warn_trailing_whitespace(prompt)
    text = render_prompt(tokenizer, prompt)
    return special_prefix(tokenizer, text) + tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_completion(tokenizer, completion_text: str) -> list[int]:
    """Completion ids without special tokens, ending with exactly one EOS."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise RtoError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; completions must end with "
            "one so the model learns to stop (set tokenizer.eos_token to its end-of-text token)"
        )
    ids = list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    return ids


# --------------------------------------------------------------------------- truncation


def _check_overflow(overflow: str) -> None:
    if overflow not in ("truncate", "drop"):
        raise ConfigError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")


def _keep_last(ids: list[int], n: int, bos_id: int | None) -> list[int]:
    """The last n ids; a leading BOS stays in front when the prompt is cut."""
    if len(ids) <= n:
        return ids
    if n > 1 and bos_id is not None and ids[0] == bos_id:
        return ids[:1] + ids[len(ids) - n + 1 :]
    return ids[len(ids) - n :] if n > 0 else []


def _prompt_budget(n_prompt: int, n_completion: int, max_length: int) -> int:
    """How many prompt tokens to keep (see the module docstring)."""
    if n_prompt + n_completion <= max_length:
        return n_prompt
    return min(n_prompt, max(max_length - n_completion, max_length // 2))


def _check_max_length(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


# --------------------------------------------------------------------------- examples


def tokenize_sft(tokenizer, example: dict, max_length: int, overflow: str = "truncate") -> dict | None:
    """{"prompt", "completion"} -> {"input_ids", "completion_mask", "truncated"} or None (dropped).

    completion_mask is 1 on the completion tokens (EOS included) and 0 on the prompt. For the
    plain-text format (prompt None) the whole text is the completion; only a BOS is unmasked.
    """
    _check_overflow(overflow)
    _check_max_length("max_length", max_length, 2)
    prompt = example["prompt"]
    text = render_completion(tokenizer, prompt, example["completion"])
    p = special_prefix(tokenizer, text) if prompt is None else encode_prompt(tokenizer, prompt)
    c = encode_completion(tokenizer, text)
    n_p = _prompt_budget(len(p), len(c), max_length)
    truncated = len(p) + len(c) > max_length
    if truncated and overflow == "drop":
        return None
    p = _keep_last(p, n_p, tokenizer.bos_token_id)
    c = c[: max_length - len(p)]
    return {"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c), "truncated": truncated}


def tokenize_preference(tokenizer, example: dict, max_length: int, overflow: str = "truncate") -> dict | None:
    """{"prompt", "chosen", "rejected"} -> chosen/rejected ids and masks sharing one prompt, or None.

    Returns {"chosen_input_ids", "chosen_completion_mask", "rejected_input_ids",
    "rejected_completion_mask", "prompt_length", "truncated"}.
    """
    _check_overflow(overflow)
    _check_max_length("max_length", max_length, 2)
    prompt = example["prompt"]
    if prompt is None:
        raise DataError("a preference example needs a prompt")
    p = encode_prompt(tokenizer, prompt)
    ch = encode_completion(tokenizer, render_completion(tokenizer, prompt, example["chosen"]))
    rj = encode_completion(tokenizer, render_completion(tokenizer, prompt, example["rejected"]))
    longest = max(len(ch), len(rj))
    truncated = len(p) + longest > max_length
    if truncated and overflow == "drop":
        return None
    p = _keep_last(p, _prompt_budget(len(p), longest, max_length), tokenizer.bos_token_id)
    ch, rj = ch[: max_length - len(p)], rj[: max_length - len(p)]
    return {
        "chosen_input_ids": p + ch,
        "chosen_completion_mask": [0] * len(p) + [1] * len(ch),
        "rejected_input_ids": p + rj,
        "rejected_completion_mask": [0] * len(p) + [1] * len(rj),
        "prompt_length": len(p),
        "truncated": truncated,
    }


def tokenize_prompt(
    tokenizer, example: dict, max_prompt_length: int, overflow: str = "truncate"
) -> dict | None:
    """{"prompt", "meta"?} -> {"input_ids", "prompt", "meta", "truncated"} or None.

    Truncation keeps the LAST tokens. "prompt" is the original (untruncated) prompt, kept so that
    a reward model with its own tokenizer / chat template can re-render it; "meta" is passed through.
    """
    _check_overflow(overflow)
    _check_max_length("max_prompt_length", max_prompt_length, 1)
    ids = encode_prompt(tokenizer, example["prompt"])
    truncated = len(ids) > max_prompt_length
    if truncated and overflow == "drop":
        return None
    return {
        "input_ids": _keep_last(ids, max_prompt_length, tokenizer.bos_token_id),
        "prompt": example["prompt"],
        "meta": example.get("meta", {}),
        "truncated": truncated,
    }


def tokenize_all(fn, tokenizer, examples: list[dict], source: str, **kw) -> tuple[list[dict], dict]:
    """Run `fn(tokenizer, example, **kw)` over `examples` -> (kept items, counts).

    counts = {"total", "truncated", "dropped"}; the per-item "truncated" flag is removed from
    the items. A DataError from one example is re-raised naming `source` and the 1-based
    example number. An empty result is a DataError that reports the counts.
    """
    kept: list[dict] = []
    counts = {"total": len(examples), "truncated": 0, "dropped": 0}
    bar = tqdm(examples, desc=f"tokenizing {source}", disable=None, leave=False)
    for i, example in enumerate(bar, start=1):
        try:
            item = fn(tokenizer, example, **kw)
        except DataError as e:
            raise DataError(f"{source}: example {i}: {e}") from None
        if item is None:
            counts["dropped"] += 1
            continue
        counts["truncated"] += int(item.pop("truncated", False))
        kept.append(item)
    if not kept:
        raise DataError(
            f"{source}: empty dataset after filtering: {counts['total']} examples, {counts['dropped']} dropped "
            f"as too long ({', '.join(f'{k}={v}' for k, v in kw.items())}); raise the length limit or use "
            "overflow='truncate'"
        )
    if counts["truncated"] or counts["dropped"]:
        logger.info(
            "%s: %d examples, %d truncated, %d dropped",
            source,
            counts["total"],
            counts["truncated"],
            counts["dropped"],
        )
    return kept, counts


# --------------------------------------------------------------------------- tokenizer setup


PAD_TOKEN = "<|rto_pad|>"  # added when a tokenizer has no pad token distinct from EOS (nor an UNK to reuse)


def ensure_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token distinct from EOS. Returns True if embeddings must be resized.

    Padding must never be EOS: code that finds the end of a response by looking for EOS, or
    builds masks from ids, would confuse the two. Order of preference: keep an existing pad token
    that differs from EOS; else use UNK if it exists and differs from EOS (no new embedding
    needed); else add a new special token PAD_TOKEN -- then the caller must call
    ``model.resize_token_embeddings(len(tokenizer))`` (True is returned; rto.models does it when it
    loads a model with this tokenizer).
    """
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != eos_id:
        return False
    if tokenizer.pad_token is not None:
        logger.warning("the tokenizer's pad token equals its EOS token; choosing a distinct pad token")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos_id:
        tokenizer.pad_token = tokenizer.unk_token
        return False
    added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return added > 0
