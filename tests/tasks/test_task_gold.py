import math
import textwrap

import numpy as np
import pytest
import torch

from rto.errors import RtoError
from rto.tasks.gold import (
    check_gold_scores,
    load_gold_reward,
    vader_compound,
    vader_gold_reward,
    wellformedness,
)
from rto.tasks.sentiment import generate_examples


def gold(*responses):
    return vader_gold_reward([""] * len(responses), list(responses))


def test_positive_beats_negative_and_fluent_beats_degenerate():
    pos, neg, rep, empty = gold(
        " was great. I loved every minute of it.",
        " was terrible. It was a waste of time.",
        " great great great great great!!!",
        "",
    )
    assert pos > 0.5 and neg < -0.5
    assert rep < pos
    assert rep < 0  # repetition is worse than neutral, however positive VADER finds it
    assert empty == -1.0
    stuffed, punct = gold(
        " great wonderful amazing superb lovely awesome perfect brilliant fantastic nice.",
        " was great. I loved every minute of it!!!",
    )
    assert stuffed < 0 and punct < pos


def test_gold_is_w_times_compound_minus_one_minus_w():
    responses = [
        " was great.",
        " is not bad at all. We will come back.",
        " is awful and rude",
        "okay okay okay okay",
    ]
    c = vader_compound(responses)
    w = [wellformedness(r) for r in responses]
    expected = [wi * ci - (1 - wi) for wi, ci in zip(w, c)]
    assert gold(*responses) == pytest.approx(expected)


def test_wellformedness_hand_computed():
    # words not in VADER's lexicon, so only length, repetition and punctuation count
    assert wellformedness("one two three four.") == 1.0
    assert wellformedness("one two three one two three.") == pytest.approx(3 / 4)  # 3 distinct of 4 trigrams
    assert wellformedness("one two three four") == pytest.approx(0.8)  # no end punctuation
    assert wellformedness("one two.") == pytest.approx(2 / 4)  # too short
    assert wellformedness("one two three four?!") == pytest.approx(0.8)  # a punctuation run
    long = (
        " ".join(f"zq{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(120)) + "."
    )  # 120 distinct words
    assert wellformedness(long) == pytest.approx(60 / 120)
    assert wellformedness("") == 0.0 and wellformedness(" !!! ") == 0.0


def test_gold_range_and_corpus_is_wellformed():
    examples = generate_examples(1000, seed=0)
    g = np.array(vader_gold_reward([e["prompt"] for e in examples], [e["completion"] for e in examples]))
    assert g.min() >= -1 and g.max() <= 1
    assert g.std() > 0.5 and abs(g.mean()) < 0.15
    w = np.array([wellformedness(e["completion"]) for e in examples])
    assert (w == 1).mean() > 0.95 and w.min() > 0.7
    odd = ["!!!!!!!", "good " * 200, "bad bad bad", "?", "\n", "GREAT!!!! AMAZING!!!!"]
    assert all(-1 <= x <= 1 for x in gold(*odd))


def test_gold_length_mismatch():
    with pytest.raises(RtoError, match="2 prompts but 1 responses"):
        vader_gold_reward(["a", "b"], ["x"])


def test_vader_spec_is_builtin():
    assert load_gold_reward("vader") is vader_gold_reward
    assert load_gold_reward(" VADER ") is vader_gold_reward


def test_plugin_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_gold_mod_a.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            def length_reward(prompts, responses):
                return [float(len(r)) for r in responses]
            def as_array(prompts, responses):
                return np.ones(len(responses))
            class Scorers:
                @staticmethod
                def by_prompt(prompts, responses):
                    return [len(p) for p in prompts]
            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_gold_reward("my_gold_mod_a:length_reward")
    assert fn(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    assert fn.__name__ == "length_reward"
    assert load_gold_reward("my_gold_mod_a:as_array")(["p"], ["x"]) == [1.0]
    assert load_gold_reward("my_gold_mod_a:Scorers.by_prompt")(["abc"], ["x"]) == [3.0]
    with pytest.raises(RtoError, match="has no attribute 'missing'"):
        load_gold_reward("my_gold_mod_a:missing")
    with pytest.raises(RtoError, match="not a function"):
        load_gold_reward("my_gold_mod_a:NOT_CALLABLE")


def test_plugin_file_function(tmp_path):
    path = tmp_path / "scorer.py"
    path.write_text("def score(prompts, responses):\n    return [0.5 for _ in responses]\n")
    fn = load_gold_reward(f"{path}:score")
    assert fn(["a", "b", "c"], ["x", "y", "z"]) == [0.5, 0.5, 0.5]
    with pytest.raises(RtoError, match="file not found"):
        load_gold_reward(f"{tmp_path / 'nope.py'}:score")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom at import')\n")
    with pytest.raises(RtoError, match="boom at import"):
        load_gold_reward(f"{broken}:score")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "expected 'vader'"),
        ("vaderr", "expected 'vader'"),
        ("module_only:", "expected 'vader'"),
        (":fn", "expected 'vader'"),
        ("rto_no_such_module_xyz:fn", "no module named 'rto_no_such_module_xyz'"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(RtoError, match=message):
        load_gold_reward(spec)


def test_plugin_import_error_inside_user_module(tmp_path, monkeypatch):
    (tmp_path / "my_gold_mod_b.py").write_text("import rto_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RtoError, match="importing 'my_gold_mod_b' failed.*rto_dependency_that_is_missing"):
        load_gold_reward("my_gold_mod_b:fn")


@pytest.mark.parametrize(
    "body, message",
    [
        ("return [1.0]", "returned 1 scores for 2 responses"),
        ("return [1.0, float('nan')]", "score 1 is not finite"),
        ("return [1.0, float('inf')]", "score 1 is not finite"),
        ("return [1.0, 'high']", "score 1 is not a number"),
        ("return 1.0", "must return a list of floats"),
        ("return 'ab'", "must return a list of floats"),
        ("raise KeyError('oops')", "raised KeyError"),
    ],
)
def test_plugin_bad_return_values(tmp_path, body, message):
    path = tmp_path / "bad_scorer.py"
    path.write_text(f"def score(prompts, responses):\n    {body}\n")
    fn = load_gold_reward(f"{path}:score")
    with pytest.raises(RtoError, match=message):
        fn(["a", "b"], ["x", "y"])


def test_check_gold_scores_accepts_arrays_and_tensors():
    assert check_gold_scores(np.array([1, 2]), 2, "x") == [1.0, 2.0]
    assert check_gold_scores(torch.tensor([0.5, -0.5]), 2, "x") == [0.5, -0.5]
    assert check_gold_scores((1, 2.5), 2, "x") == [1.0, 2.5]
    out = check_gold_scores([np.float32(0.25)], 1, "x")
    assert out == [0.25] and isinstance(out[0], float)
    with pytest.raises(RtoError, match="'my scorer'"):
        check_gold_scores([math.nan], 1, "my scorer")
