"""The frontier experiment's pure functions against hand-made answers and naive references."""

import math

import numpy as np
import pytest

from rto.experiments.curves import (
    best_below,
    fit_gao,
    gao_curve,
    gao_peak_kl,
    interpolate_at,
    pareto_front,
)


def test_pareto_front_on_hand_made_points():
    #            0     1     2     3     4     5     6
    kl = [0.0, 1.0, 2.0, 2.0, 3.0, 5.0, 4.0]
    gold = [0.1, 0.3, 0.2, 0.5, 0.5, 0.9, 0.4]
    # 0 (first), 1 (better than 0), 3 (KL 2, beats 1; 2 is beaten by 1), 4 ties 3 at higher KL: out,
    # 6 (0.4 < 0.5): out, 5 (0.9): in
    assert pareto_front(kl, gold).tolist() == [0, 1, 3, 5]
    assert pareto_front([1.0], [0.2]).tolist() == [0]
    assert pareto_front([2.0, 1.0], [0.1, 0.1]).tolist() == [1]  # equal gold: the lower KL
    assert pareto_front([1.0, 2.0], [float("nan"), 0.3]).tolist() == [1]


def test_pareto_front_matches_a_naive_definition():
    rng = np.random.default_rng(0)
    kl, gold = rng.uniform(0, 10, 40), rng.normal(size=40)
    naive = [
        i for i in range(40) if not any((kl[j] <= kl[i] and gold[j] >= gold[i]) for j in range(40) if j != i)
    ]
    assert sorted(pareto_front(kl, gold).tolist()) == sorted(naive)


def test_best_below_is_the_running_best():
    kl, gold = [1.0, 2.0, 3.0], [0.5, 0.2, 0.7]
    got = best_below(kl, gold, [0.5, 1.0, 2.5, 10.0])
    assert np.isnan(got[0])
    assert got[1:].tolist() == [0.5, 0.5, 0.7]


def test_interpolate_at_first_crossing_and_out_of_range():
    kl = [0.0, 2.0, 6.0, 4.0, 10.0]
    g = [0.0, 1.0, 3.0, 2.0, 5.0]
    got = interpolate_at(kl, g, [0.0, 1.0, 5.0, 6.0, 8.0, 12.0])
    assert got[0] == 0.0
    assert got[1] == pytest.approx(0.5)
    assert got[2] == pytest.approx(1.0 + 3 / 4 * 2.0)  # between KL 2 and 6 (first crossing), not 6 -> 4
    assert got[3] == 3.0
    assert got[4] == pytest.approx(2.0 + 4 / 6 * 3.0)
    assert math.isnan(got[5])
    # columns (one per prompt) share the trajectory's weights
    cols = np.array([[0.0, 10.0], [1.0, 20.0], [3.0, 30.0], [2.0, 40.0], [5.0, 50.0]])
    got2 = interpolate_at(kl, cols, [1.0, 5.0])
    assert got2.shape == (2, 2)
    assert got2[0].tolist() == pytest.approx([0.5, 15.0])
    assert got2[1].tolist() == pytest.approx([2.5, 27.5])


@pytest.mark.parametrize("form,alpha,beta", [("rl", 0.8, 0.3), ("bon", 0.6, 0.25)])
def test_fit_gao_recovers_known_coefficients(form, alpha, beta):
    kl = np.linspace(0.05, 16.0, 50)
    r = gao_curve(kl, alpha, beta, form)
    d = np.sqrt(kl)
    naive = d * (alpha - beta * np.log(d)) if form == "rl" else d * (alpha - beta * d)
    assert r == pytest.approx(naive)
    a, b = fit_gao(kl, r, form)
    assert (a, b) == pytest.approx((alpha, beta), rel=1e-9)
    noisy = r + np.random.default_rng(1).normal(0, 0.01, size=r.shape)
    a, b = fit_gao(np.concatenate([[0.0], kl]), np.concatenate([[0.0], noisy]), form)  # KL 0 left out
    assert a == pytest.approx(alpha, abs=0.02) and b == pytest.approx(beta, abs=0.02)


def test_gao_peaks():
    # RL: d* = exp(alpha / beta - 1); best-of-N: d* = alpha / (2 beta); KL* = d*^2
    assert gao_peak_kl(0.8, 0.4, "rl") == pytest.approx(math.exp(1.0) ** 2)
    kl = np.linspace(0.01, 60, 200001)
    assert kl[np.argmax(gao_curve(kl, 0.8, 0.4, "rl"))] == pytest.approx(math.exp(2.0), abs=1e-3)
    assert gao_peak_kl(0.6, 0.25, "bon") == pytest.approx(1.2**2)
    assert gao_peak_kl(0.6, -0.1, "rl") == math.inf  # never turns down
    assert math.isnan(fit_gao([1.0], [0.2], "rl")[0])  # one point: no fit
