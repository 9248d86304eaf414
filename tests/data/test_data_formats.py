import pytest

from rto.data.formats import (
    ColumnMap,
    split_shared_prefix,
    to_preference_examples,
    to_prompt_examples,
    to_sft_examples,
)
from rto.errors import DataError


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


# --------------------------------------------------------------------------- SFT


def test_sft_text():
    assert to_sft_examples([{"text": "hello world"}]) == [{"prompt": None, "completion": "hello world"}]


def test_sft_prompt_completion_strings():
    rows = [{"prompt": "Q?", "completion": " A.", "extra": 1}]
    assert to_sft_examples(rows) == [{"prompt": "Q?", "completion": " A."}]


def test_sft_prompt_completion_messages():
    rows = [{"prompt": [S("be nice"), U("hi")], "completion": [A("hello")]}]
    assert to_sft_examples(rows) == [{"prompt": [S("be nice"), U("hi")], "completion": [A("hello")]}]


def test_sft_messages_last_assistant_turn_is_completion():
    conv = [U("hi"), A("hello"), U("how are you"), A("fine")]
    assert to_sft_examples([{"messages": conv}]) == [{"prompt": conv[:3], "completion": [A("fine")]}]


def test_sft_prompt_completion_preferred_over_text():
    rows = [{"text": "x", "prompt": "p", "completion": "c"}]
    assert to_sft_examples(rows) == [{"prompt": "p", "completion": "c"}]


def test_sft_column_map():
    cols = ColumnMap(prompt="question", completion="answer", text="body", messages="chat")
    assert to_sft_examples([{"question": "q", "answer": "a"}], cols) == [{"prompt": "q", "completion": "a"}]
    assert to_sft_examples([{"body": "t"}], cols) == [{"prompt": None, "completion": "t"}]
    conv = [U("x"), A("y")]
    assert to_sft_examples([{"chat": conv}], cols) == [{"prompt": [U("x")], "completion": [A("y")]}]


def test_sft_null_keys_in_messages_are_dropped():
    # parquet gives every message the union of keys, absent ones as None
    rows = [{"messages": [{"role": "user", "content": "a", "name": None}, A("b")]}]
    assert to_sft_examples(rows)[0]["prompt"] == [U("a")]


def test_sft_missing_columns_suggests_close_match():
    with pytest.raises(DataError) as e:
        to_sft_examples([{"txt": "hello", "id": 3}], source="train.jsonl")
    msg = str(e.value)
    assert "train.jsonl: row 1" in msg
    assert "'text'" in msg and "'prompt'+'completion'" in msg and "'messages'" in msg
    assert "found ['id', 'txt']" in msg
    assert "'txt' for 'text'" in msg
    assert msg.endswith("Rename the column, or pass --text-column txt")  # the CLI option, no internal class


def test_sft_prompt_without_completion():
    with pytest.raises(DataError, match=r"expected columns 'prompt'\+'completion'; found \['prompt'\]"):
        to_sft_examples([{"prompt": "x"}])


def test_sft_empty_completion_names_row_and_field():
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "   "}]
    with pytest.raises(DataError, match=r"d\.jsonl: row 2, field 'completion': empty"):
        to_sft_examples(rows, source="d.jsonl")


def test_sft_empty_prompt_and_null_field():
    with pytest.raises(DataError, match=r"row 1, field 'prompt': empty"):
        to_sft_examples([{"prompt": "", "completion": "b"}])
    with pytest.raises(DataError, match=r"row 2, field 'completion': missing or null"):
        to_sft_examples([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}])
    with pytest.raises(DataError, match=r"row 2, field 'completion': missing or null"):
        to_sft_examples([{"prompt": "a", "completion": "b"}, {"prompt": "a"}])


def test_sft_conversation_must_end_with_assistant():
    with pytest.raises(DataError, match=r"row 1, field 'messages': the last message has role 'user'"):
        to_sft_examples([{"messages": [U("hi"), A("yo"), U("again")]}])


def test_sft_conversation_needs_prompt_turns():
    with pytest.raises(DataError, match=r"field 'messages': only one message"):
        to_sft_examples([{"messages": [A("yo")]}])


@pytest.mark.parametrize(
    "messages, pattern",
    [
        ("not a list", r"expected a list of messages, got str"),
        ([], r"empty conversation"),
        ([{"role": "user"}, A("x")], r"message 1 must be an object with 'role' and 'content'"),
        (["hi", A("x")], r"message 1 must be an object"),
        ([{"role": "tool", "content": "x"}, A("x")], r"message 1 has role 'tool'"),
        ([U("hi"), {"role": "assistant", "content": ["a", "b"]}], r"message 2 content must be a string"),
        ([U("hi"), A("  ")], r"the assistant completion is empty"),
    ],
)
def test_sft_bad_messages(messages, pattern):
    with pytest.raises(DataError, match=r"src: row 1, field 'messages': " + pattern):
        to_sft_examples([{"messages": messages}], source="src")


def test_sft_mixed_string_and_messages():
    with pytest.raises(DataError, match=r"row 1: 'prompt' is a message list but 'completion' is a string"):
        to_sft_examples([{"prompt": [U("hi")], "completion": "yo"}])


def test_sft_completion_messages_must_be_assistant():
    with pytest.raises(DataError, match=r"field 'completion': completion message 1 has role 'user'"):
        to_sft_examples([{"prompt": [U("hi")], "completion": [U("yo")]}])


def test_sft_no_rows():
    with pytest.raises(DataError, match="x.json: no rows"):
        to_sft_examples([], source="x.json")


# --------------------------------------------------------------------------- preferences


def test_preference_explicit_strings():
    rows = [{"prompt": "Q:", "chosen": " good", "rejected": " bad"}]
    assert to_preference_examples(rows) == rows


def test_preference_explicit_conversations():
    rows = [{"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("go away")]}]
    assert to_preference_examples(rows) == rows


def test_preference_explicit_prompt_repeated_in_conversations_is_stripped():
    rows = [{"prompt": [U("hi")], "chosen": [U("hi"), A("hello")], "rejected": [U("hi"), A("no")]}]
    assert to_preference_examples(rows) == [
        {"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("no")]}
    ]


def test_preference_implicit_conversations():
    chosen = [S("sys"), U("hi"), A("hello")]
    rejected = [S("sys"), U("hi"), A("go away")]
    out = to_preference_examples([{"chosen": chosen, "rejected": rejected}])
    assert out == [{"prompt": [S("sys"), U("hi")], "chosen": [A("hello")], "rejected": [A("go away")]}]


def test_preference_string_prompt_with_full_conversations_uses_shared_turns():
    # UltraFeedback-binarized layout: prompt is a string, chosen/rejected are whole conversations.
    row = {"prompt": "hi", "chosen": [U("hi"), A("hello")], "rejected": [U("hi"), A("no")]}
    assert to_preference_examples([row]) == [
        {"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("no")]}
    ]


def test_preference_implicit_strings_hh_style():
    chosen = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
    rejected = "\n\nHuman: What is 2+2?\n\nAssistant: No idea."
    (ex,) = to_preference_examples([{"chosen": chosen, "rejected": rejected}])
    assert ex == {
        "prompt": "\n\nHuman: What is 2+2?\n\nAssistant:",
        "chosen": " It is 4.",
        "rejected": " No idea.",
    }


def test_split_shared_prefix_backs_off_to_word_start():
    assert split_shared_prefix("The answer is 4.", "The answer is 42.") == ("The answer is", " 4.", " 42.")
    assert split_shared_prefix("I liked it", "I loved it") == ("I", " liked it", " loved it")
    # divergence at a non-word character: no back-off needed
    assert split_shared_prefix("Yes.", "Yes!") == ("Yes", ".", "!")
    assert split_shared_prefix("f(bar)", "f(baz)") == ("f(", "bar)", "baz)")
    for a, b in [("The answer is 4.", "The answer is 42."), ("x  y", "x z")]:
        p, ca, cb = split_shared_prefix(a, b)
        assert p + ca == a and p + cb == b


def test_preference_implicit_strings_without_shared_prefix():
    with pytest.raises(
        DataError, match=r"row 1: no 'prompt' column, and 'chosen' and 'rejected' share no prefix"
    ):
        to_preference_examples([{"chosen": "Great", "rejected": "Grand"}])


def test_preference_implicit_completion_empty():
    with pytest.raises(DataError, match=r"row 1, field 'chosen': the completion is empty"):
        to_preference_examples([{"chosen": "Good", "rejected": "Good movie"}])


def test_preference_column_map():
    cols = ColumnMap(prompt="q", chosen="good", rejected="bad")
    out = to_preference_examples([{"q": "Q", "good": "g", "bad": "b"}], cols)
    assert out == [{"prompt": "Q", "chosen": "g", "rejected": "b"}]


def test_preference_identical_is_error_by_default_or_dropped():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ]
    with pytest.raises(DataError, match=r"prefs\.jsonl: row 2: 'chosen' and 'rejected' are identical"):
        to_preference_examples(rows, source="prefs.jsonl")
    assert to_preference_examples(rows, identical="drop") == rows[:1]
    with pytest.raises(DataError, match="no usable preference rows"):
        to_preference_examples(rows[1:], identical="drop")


def test_preference_missing_columns_suggestion():
    with pytest.raises(DataError) as e:
        to_preference_examples([{"prompt": "p", "chosen": "a", "rejectd": "b"}], source="p.json")
    msg = str(e.value)
    assert "p.json: row 1: not preference data: expected columns 'chosen'+'rejected'" in msg
    assert "'rejectd' for 'rejected'" in msg and msg.endswith("pass --rejected-column rejectd")


def test_preference_empty_fields():
    with pytest.raises(DataError, match=r"row 1, field 'rejected': empty"):
        to_preference_examples([{"prompt": "p", "chosen": "a", "rejected": ""}])
    with pytest.raises(DataError, match=r"row 1, field 'prompt': empty"):
        to_preference_examples([{"prompt": " ", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 1, field 'chosen': the assistant completion is empty"):
        to_preference_examples([{"prompt": [U("x")], "chosen": [A("")], "rejected": [A("b")]}])


def test_preference_mixed_kinds():
    with pytest.raises(DataError, match=r"'chosen' is a string but 'rejected' is a message list"):
        to_preference_examples([{"prompt": "p", "chosen": "a", "rejected": [A("b")]}])
    with pytest.raises(DataError, match=r"'prompt' is a message list but 'chosen' is a string"):
        to_preference_examples([{"prompt": [U("p")], "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"field 'prompt': 'chosen'/'rejected' are assistant messages"):
        to_preference_examples([{"prompt": "p", "chosen": [A("a")], "rejected": [A("b")]}])


def test_preference_conversations_diverging_at_a_user_turn():
    chosen = [U("hi"), A("yo"), U("a"), A("b")]
    rejected = [U("hi"), A("yo"), U("c"), A("d")]
    with pytest.raises(DataError, match=r"field 'chosen': completion message 1 has role 'user'"):
        to_preference_examples([{"chosen": chosen, "rejected": rejected}])


def test_preference_conversation_ending_with_user():
    row = {"prompt": [U("hi")], "chosen": [A("a"), U("b")], "rejected": [A("c")]}
    with pytest.raises(DataError, match=r"field 'chosen': completion message 2 has role 'user'"):
        to_preference_examples([row])


# --------------------------------------------------------------------------- prompts


def test_prompts_strings_with_meta():
    out = to_prompt_examples([{"prompt": "Once upon", "label": 1, "id": "a"}])
    assert out == [{"prompt": "Once upon", "meta": {"label": 1, "id": "a"}}]


def test_prompts_messages_drop_trailing_assistant():
    rows = [{"messages": [U("hi"), A("yo")], "k": 0}, {"messages": [U("hi"), A("yo"), U("more")]}]
    out = to_prompt_examples(rows)
    assert out[0] == {"prompt": [U("hi")], "meta": {"k": 0}}
    assert out[1] == {"prompt": [U("hi"), A("yo"), U("more")], "meta": {}}


def test_prompts_column_map_and_errors():
    assert to_prompt_examples([{"q": "x"}], ColumnMap(prompt="q")) == [{"prompt": "x", "meta": {}}]
    with pytest.raises(DataError, match=r"row 1: not prompt data.*'promt' for 'prompt'"):
        to_prompt_examples([{"promt": "x"}])
    with pytest.raises(DataError, match=r"row 2, field 'prompt': empty"):
        to_prompt_examples([{"prompt": "x"}, {"prompt": ""}])
    with pytest.raises(DataError, match=r"row 1, field 'messages': nothing is left"):
        to_prompt_examples([{"messages": [A("only")]}])
