"""rto.eval's metric functions against hand computations and naive loops."""

import math

import numpy as np
import pytest

from rto.errors import ConfigError, RtoError
from rto.eval import (
    Samples,
    best_of_n,
    best_of_n_kl,
    bootstrap_ci,
    bootstrap_diff_ci,
    distinct_n,
    parse_policies,
    split_group,
    verdict,
    win_outcomes,
    win_rate,
)


def test_distinct_n_by_hand():
    texts = ["the cat the cat", "The dog"]
    # unigrams: the cat the cat the dog -> 6 total, {the, cat, dog} = 3 distinct
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 4 total, 3 distinct
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_distinct_n_matches_naive_loop():
    rng = np.random.default_rng(0)
    vocab = ["a", "b", "c", "d", "good", "bad"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(0, 9))) for _ in range(40)]
    for n in (1, 2, 3):
        grams = []
        for t in texts:
            w = t.split()
            for i in range(len(w) - n + 1):
                grams.append(" ".join(w[i : i + n]))
        expected = len(set(grams)) / len(grams)
        assert distinct_n(texts, n) == pytest.approx(expected)


def test_win_rate_ties_count_half():
    a = [0.5, 0.1, -0.2, 0.3]
    b = [0.1, 0.1, 0.0, 0.9]
    # win, tie, loss, loss -> (1 + 0.5 + 0 + 0) / 4
    assert win_outcomes(a, b).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert win_rate(a, b) == pytest.approx(0.375)
    assert win_rate(a, a) == 0.5
    with pytest.raises(RtoError):
        win_rate([1.0], [1.0, 2.0])


def test_bootstrap_ci_of_constant_is_a_point_and_deterministic():
    m, lo, hi = bootstrap_ci(np.full(50, 0.25))
    assert (m, lo, hi) == pytest.approx((0.25, 0.25, 0.25))
    x = np.random.default_rng(1).normal(size=100)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)


def test_bootstrap_ci_matches_normal_theory_for_a_large_sample():
    x = np.random.default_rng(2).normal(0.3, 1.0, size=2000)
    m, lo, hi = bootstrap_ci(x, n_boot=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert m == pytest.approx(x.mean())
    assert lo < m < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_two_level_bootstrap_is_wider_when_seeds_disagree():
    rng = np.random.default_rng(4)
    prompts = rng.normal(size=200)
    agree = np.stack([prompts, prompts + 0.01, prompts - 0.01])
    disagree = np.stack([prompts - 1.0, prompts, prompts + 1.0])
    w_agree = np.subtract(*bootstrap_ci(agree)[2:0:-1])
    w_disagree = np.subtract(*bootstrap_ci(disagree)[2:0:-1])
    assert w_disagree > 3 * w_agree
    assert bootstrap_ci(disagree)[0] == pytest.approx(disagree.mean())


def test_paired_difference_ci_and_verdict():
    rng = np.random.default_rng(5)
    base = rng.normal(size=300)  # large prompt effects, shared by both sides
    a = (base + 0.2)[None, :]
    b = base[None, :]
    d, lo, hi = bootstrap_diff_ci(a, b)
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)  # paired: prompt effects cancel
    assert verdict((d, lo, hi), "RTO", "PPO") == "RTO > PPO"
    assert verdict((-0.1, -0.2, -0.05), "RTO", "PPO") == "PPO > RTO"
    assert verdict((0.01, -0.05, 0.07), "RTO", "PPO") == "no significant difference"


def test_best_of_n_picks_max_gold_and_analytic_kl():
    gold = np.array([[[0.1, 0.9, -0.3], [0.5, 0.5, 0.2]]])  # 1 rep, 2 prompts, 3 samples
    s = Samples(
        texts=[[["a", "b", "c"], ["d", "e", "f"]]],
        gold=gold,
        kl=np.zeros_like(gold),
        rm=np.arange(6.0).reshape(gold.shape),
        length=np.array([[[1, 2, 3], [4, 5, 6]]], dtype=float),
        ended=np.ones_like(gold, dtype=bool),
    )
    b = best_of_n(s)
    assert b.texts == [[["b"], ["d"]]]  # first of the tied maxima
    assert b.gold[..., 0].tolist() == [[0.9, 0.5]]
    assert b.rm[..., 0].tolist() == [[1.0, 3.0]]
    assert b.length[..., 0].tolist() == [[2.0, 4.0]]
    assert b.kl[0, 0, 0] == pytest.approx(math.log(3) - 2 / 3)
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_policy_names_and_groups():
    assert parse_policies(["sft=a/sft", "runs/x/ppo-seed1/"]) == {
        "sft": "a/sft",
        "ppo-seed1": "runs/x/ppo-seed1/",
    }
    with pytest.raises(ConfigError):
        parse_policies(["a=x", "a=y"])
    assert split_group("rto-seed12") == ("rto", 12)
    assert split_group("best-of-16") == ("best-of-16", None)
