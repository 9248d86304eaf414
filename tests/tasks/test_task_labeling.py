import math

import numpy as np
import pytest
import torch

from rto.errors import RtoError
from rto.tasks.labeling import (
    bradley_terry_labels,
    make_preference_rows,
    preference_probability,
    sample_responses,
)
from tests.conftest import make_tiny_gpt2


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_preference_probability_matches_sigmoid_and_does_not_overflow():
    for a, b, tau in [(0.5, 0.2, 0.1), (-0.3, 0.4, 0.25), (0.0, 0.0, 1.0), (1.0, -1.0, 0.5)]:
        assert preference_probability(a, b, tau) == pytest.approx(sigmoid((a - b) / tau))
    assert preference_probability(1.0, -1.0, 1e-4) == 1.0
    assert preference_probability(-1.0, 1.0, 1e-4) == 0.0
    assert preference_probability(0.3, 0.3) == 0.5


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_label_frequencies_follow_bradley_terry(kind):
    n, tau = 20000, 0.1
    for gap in [0.0, 0.05, 0.1, 0.3, -0.2]:
        gen = np.random.default_rng(7) if kind == "numpy" else torch.Generator().manual_seed(7)
        labels = bradley_terry_labels([0.2 + gap] * n, [0.2] * n, tau, gen)
        freq = sum(labels) / n
        # binomial std at p=0.5 is 0.0035; 0.015 is > 4 sigma
        assert abs(freq - sigmoid(gap / tau)) < 0.015, (gap, freq)


def test_labels_deterministic_given_seed():
    ga = list(np.linspace(-1, 1, 500))
    gb = list(np.linspace(1, -1, 500) * 0.1)
    l1 = bradley_terry_labels(ga, gb, 0.5, np.random.default_rng(3))
    l2 = bradley_terry_labels(ga, gb, 0.5, np.random.default_rng(3))
    l3 = bradley_terry_labels(ga, gb, 0.5, np.random.default_rng(4))
    assert l1 == l2 and l1 != l3
    t1 = bradley_terry_labels(ga, gb, 0.5, torch.Generator().manual_seed(3))
    t2 = bradley_terry_labels(ga, gb, 0.5, torch.Generator().manual_seed(3))
    assert t1 == t2


def test_label_errors():
    with pytest.raises(RtoError, match="tau must be > 0"):
        bradley_terry_labels([0.0], [1.0], 0.0)
    with pytest.raises(RtoError, match="2 gold scores for a but 1"):
        bradley_terry_labels([0.0, 1.0], [1.0], 0.1)
    with pytest.raises(RtoError, match="3 prompts but 2 responses_b"):
        make_preference_rows(["p"] * 3, ["a"] * 3, ["b"] * 2, [0.0] * 3, [0.0] * 3)


def test_preference_rows_hold_no_gold_and_skip_identical_pairs():
    prompts = ["p0", "p1", "p2", "p3"]
    ra = ["good", "same", "bad", "meh"]
    rb = ["bad", "same", "good", "meh!"]
    ga = [0.9, 0.1, -0.9, 0.0]
    gb = [-0.9, 0.1, 0.9, 0.0]
    data = make_preference_rows(prompts, ra, rb, ga, gb, tau=0.01, seed=0)
    rows, gold, n_identical = data
    assert n_identical == 1
    assert len(rows) == len(gold) == 3
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert [r["prompt"] for r in rows] == ["p0", "p2", "p3"]
    # gap 1.8 at tau 0.01: the better response is chosen with probability 1 - e^-180
    assert rows[0]["chosen"] == "good" and rows[1]["chosen"] == "good"
    assert gold[0] == {"chosen_gold": 0.9, "rejected_gold": -0.9, "p_chosen": 1.0}
    assert gold[2]["p_chosen"] == 0.5
    for row, g in zip(rows, gold):
        assert g["chosen_gold"] in (ga + gb) and set(g) == {"chosen_gold", "rejected_gold", "p_chosen"}
        assert all(isinstance(v, str) for v in row.values())


def test_preference_labels_depend_only_on_pair_index_and_seed():
    rng = np.random.default_rng(0)
    ga, gb = list(rng.uniform(-1, 1, 200)), list(rng.uniform(-1, 1, 200))
    prompts = [f"p{i}" for i in range(200)]
    ra = [f"a{i}" for i in range(200)]
    rb = [f"b{i}" for i in range(200)]
    full = make_preference_rows(prompts, ra, rb, ga, gb, tau=0.3, seed=5)
    rb_dup = list(rb)
    rb_dup[0] = ra[0]  # pair 0 becomes identical and is skipped
    skipped = make_preference_rows(prompts, ra, rb_dup, ga, gb, tau=0.3, seed=5)
    assert skipped.n_identical == 1 and skipped.rows == full.rows[1:]
    again = make_preference_rows(prompts, ra, rb, ga, gb, tau=0.3, seed=5)
    other = make_preference_rows(prompts, ra, rb, ga, gb, tau=0.3, seed=6)
    assert again.rows == full.rows and other.rows != full.rows
    # chosen gold >= rejected gold more often than not, and p_chosen is the BT probability of the outcome
    agree = np.mean([g["chosen_gold"] > g["rejected_gold"] for g in full.gold])
    assert 0.7 < agree < 1.0
    for g in full.gold:
        assert g["p_chosen"] == pytest.approx(sigmoid((g["chosen_gold"] - g["rejected_gold"]) / 0.3))


@pytest.fixture(scope="module")
def model_and_tok(tiny_tokenizer):
    return make_tiny_gpt2(tiny_tokenizer, seed=1), tiny_tokenizer


def test_sample_responses_shape_determinism_and_rng(model_and_tok):
    model, tok = model_and_tok
    prompts = ["The movie", "I hated the plot, it"]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    s1 = sample_responses(model, tok, prompts, n_per_prompt=3, max_new_tokens=6, seed=5, batch_size=4)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    s2 = sample_responses(model, tok, prompts, n_per_prompt=3, max_new_tokens=6, seed=5, batch_size=4)
    s3 = sample_responses(model, tok, prompts, n_per_prompt=3, max_new_tokens=6, seed=6, batch_size=4)
    assert s1 == s2 and s1 != s3
    assert len(s1) == 2 and all(len(r) == 3 for r in s1)
    specials = [tok.pad_token, tok.bos_token, tok.eos_token]
    assert all(not any(s in r for s in specials) for rs in s1 for r in rs)
    assert tok.padding_side == "right"  # restored
    for mode in (True, False):  # the model's train/eval mode is restored too
        model.train(mode)
        sample_responses(model, tok, prompts[:1], n_per_prompt=1, max_new_tokens=2)
        assert model.training is mode


def test_sample_responses_left_padding_matches_unpadded(model_and_tok):
    model, tok = model_and_tok
    alone = sample_responses(model, tok, ["The movie"], 1, max_new_tokens=8, temperature=0.0)
    batched = sample_responses(
        model, tok, ["The movie", "What a lovely film! The music was"], 1, max_new_tokens=8, temperature=0.0
    )
    assert alone[0] == batched[0]
    # the decoded response is exactly the generated continuation of the prompt tokens
    ids = tok("The movie", return_tensors="pt")
    full = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(full[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert alone[0][0] == expected


def test_sample_responses_stops_at_eos(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer, seed=2)
    with torch.no_grad():  # make EOS the only likely token: responses are empty strings
        model.lm_head.weight.zero_()
        model.transformer.wte.weight[tiny_tokenizer.eos_token_id] = 1.0
        model.transformer.ln_f.weight.fill_(0.0)
        model.transformer.ln_f.bias.fill_(1.0)
    out = sample_responses(model, tiny_tokenizer, ["The movie"], 2, max_new_tokens=5, seed=0)
    assert out == [["", ""]]


def test_sample_responses_do_not_depend_on_the_batch_size(model_and_tok):
    model, tok = model_and_tok
    prompts = ["The movie", "I hated the plot, it", "What a lovely film!"]
    kw = dict(n_per_prompt=3, max_new_tokens=6, seed=5)
    s4 = sample_responses(model, tok, prompts, batch_size=4, **kw)
    assert s4 == sample_responses(model, tok, prompts, batch_size=1, **kw)
    assert s4 == sample_responses(model, tok, prompts, batch_size=9, **kw)
    assert len({r for rs in s4 for r in rs}) > 3  # samples of one prompt differ: each has its own seed
