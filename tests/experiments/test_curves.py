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


def _traj_cells(rng, sft, kls, shift, n_seeds):
    """RL cells whose gold rises with KL as 0.1 * KL + shift (+ prompt noise shared by seeds)."""
    P = len(sft["gold"])
    out = []
    for _ in range(n_seeds):
        traj = []
        for it, k in enumerate(kls, start=1):
            kl = np.full(P, k) + rng.normal(0, 0.01, P)
            gold = np.asarray(sft["gold"]) + 0.1 * k + shift + rng.normal(0, 0.01, P)
            pp = {"gold": gold.tolist(), "kl": kl.tolist(), "proxy": (gold * 2).tolist(), "length": [5.0] * P}
            traj.append({"iteration": it, "per_prompt": pp})
        out.append({"trajectory": traj})
    return out


def test_analyse_matched_kl_finds_a_known_gap():
    """RTO is PPO + 0.2 at every KL: the matched-KL rows say so where both reach the KL, and 'out of
    range' beyond; the frontier is the running best; the seeds' and prompts' noise is small."""
    from rto.experiments.frontier import analyse, rl_arrays

    rng = np.random.default_rng(0)
    P = 40
    sft = {"gold": rng.normal(0, 0.3, P).tolist(), "kl": [0.0] * P, "proxy": [0.0] * P, "length": [5.0] * P}
    rl = {
        "PPO": {b: rl_arrays(_traj_cells(rng, sft, [1.0 / b, 2.0 / b], 0.0, 3), sft) for b in (0.1, 0.2)},
        "RTO": {b: rl_arrays(_traj_cells(rng, sft, [1.0 / b, 2.0 / b], 0.2, 3), sft) for b in (0.1, 0.2)},
    }
    res = analyse(rl, {}, sft, targets=(5.0, 15.0, 40.0), n_boot=200)
    rows = {r["kl"]: r for r in res["matched"]}
    for k in (5.0, 15.0):
        # interpolated between SFT (0) and the first point: the 0.2 shift enters in proportion to KL / KL_1
        assert rows[k]["verdict"] == "RTO > PPO", rows[k]
        assert rows[k]["ci"][0] > 0 and rows[k]["PPO"]["gold"] < rows[k]["RTO"]["gold"]
    assert rows[40.0]["verdict"].startswith("out of range")
    f = res["frontier"]["PPO"]
    assert all(b >= a - 1e-12 for a, b in zip(f["gold"], f["gold"][1:]))  # non-decreasing in KL
    # gold - SFT's = 0.1 KL keeps rising: the fitted RL form must not turn down inside the measured range
    assert res["fits"]["PPO"]["gold"]["peak_kl"] > res["fits"]["PPO"]["max_kl"]
    assert res["fits"]["PPO"]["reading"].startswith("the fitted gold still rises")
