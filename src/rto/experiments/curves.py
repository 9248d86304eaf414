"""Reward-KL curves: frontiers, interpolation along a training trajectory, and the over-optimisation
forms of Gao et al. (2022). Pure NumPy on plain arrays (tested alone: tests/experiments/test_curves.py).

Conventions: ``kl`` is the KL to the reference policy in nats per response; ``d = sqrt(kl)``; a reward
``r`` is measured relative to the reference policy (r = 0 at kl = 0), as in Gao et al., whose forms are

    RL:         r(d) = d (alpha - beta log d)      peak at d* = exp(alpha / beta - 1)
    best-of-N:  r(d) = d (alpha - beta d)          peak at d* = alpha / (2 beta)

Both are linear in (alpha, beta), so they are fitted by ordinary least squares (no intercept).
"""

from __future__ import annotations

import math

import numpy as np


def pareto_front(kl, gold) -> np.ndarray:
    """Indices of the points no other point beats, sorted by KL: a point is on the front when every
    point with KL <= its KL has a lower gold (ties: the lower-KL point wins; equal points: the first)."""
    kl, gold = np.asarray(kl, dtype=float), np.asarray(gold, dtype=float)
    if kl.shape != gold.shape or kl.ndim != 1:
        raise ValueError(f"pareto_front: kl {kl.shape} and gold {gold.shape} must be equal 1-D shapes")
    order = sorted(range(len(kl)), key=lambda i: (kl[i], -gold[i], i))
    front, best = [], -math.inf
    for i in order:
        if np.isfinite(gold[i]) and np.isfinite(kl[i]) and gold[i] > best:
            front.append(i)
            best = gold[i]
    return np.asarray(front, dtype=int)


def best_below(kl, gold, grid) -> np.ndarray:
    """The frontier as a function: for each x in ``grid``, the best gold among points with KL <= x
    (nan where no point has KL <= x)."""
    kl, gold = np.asarray(kl, dtype=float), np.asarray(gold, dtype=float)
    out = np.full(len(grid), np.nan)
    for j, x in enumerate(grid):
        ok = (kl <= x) & np.isfinite(gold)
        if ok.any():
            out[j] = gold[ok].max()
    return out


def interpolate_at(kl_traj, values, targets) -> np.ndarray:
    """Values at KL = each target along one trajectory, by linear interpolation between the two points
    where the trajectory first reaches the target (KL need not be monotone: the first crossing counts);
    nan where the trajectory never reaches it.

    ``kl_traj``: (T,) the trajectory's KL in order of training; ``values``: (T,) or (T, ...) (e.g. one
    column per prompt: the weights come from the trajectory's KL, the same for every column).
    Returns (len(targets),) or (len(targets), ...)."""
    kl = np.asarray(kl_traj, dtype=float)
    v = np.asarray(values, dtype=float)
    if v.shape[0] != kl.shape[0] or kl.ndim != 1:
        raise ValueError(f"interpolate_at: {kl.shape[0]} KL values for {v.shape[0]} points")
    out = np.full((len(targets), *v.shape[1:]), np.nan)
    for j, t in enumerate(targets):
        for i in range(len(kl)):
            if kl[i] == t:
                out[j] = v[i]
                break
            if i + 1 < len(kl) and min(kl[i], kl[i + 1]) < t < max(kl[i], kl[i + 1]):
                w = (t - kl[i]) / (kl[i + 1] - kl[i])
                out[j] = (1 - w) * v[i] + w * v[i + 1]
                break
    return out


def _design(d: np.ndarray, form: str) -> np.ndarray:
    if form == "rl":
        return np.stack([d, -d * np.log(d)], axis=1)
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    raise ValueError(f"form must be 'rl' or 'bon', got {form!r}")


def fit_gao(kl, reward, form: str) -> tuple[float, float]:
    """(alpha, beta) of Gao et al.'s ``form`` ('rl' or 'bon') fitted to rewards relative to the reference,
    by least squares over the points with KL > 0 (d = sqrt(KL)). Needs at least two such points."""
    kl, r = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    ok = (kl > 0) & np.isfinite(kl) & np.isfinite(r)
    if ok.sum() < 2:
        return math.nan, math.nan
    d = np.sqrt(kl[ok])
    coef, *_ = np.linalg.lstsq(_design(d, form), r[ok], rcond=None)
    return float(coef[0]), float(coef[1])


def gao_curve(kl, alpha: float, beta: float, form: str) -> np.ndarray:
    """The fitted reward at each KL (0 at KL 0)."""
    d = np.sqrt(np.asarray(kl, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = _design(np.where(d > 0, d, 1.0), form) @ np.array([alpha, beta])
    return np.where(d > 0, r, 0.0)


def gao_peak_kl(alpha: float, beta: float, form: str) -> float:
    """KL at which the fitted reward is largest (inf when it never turns down: beta <= 0)."""
    if not (np.isfinite(alpha) and np.isfinite(beta)) or beta <= 0:
        return math.inf
    if form == "rl":
        return float(math.exp(2 * (alpha / beta - 1))) if alpha / beta - 1 < 350 else math.inf
    return float((alpha / (2 * beta)) ** 2) if alpha > 0 else 0.0


__all__ = ["pareto_front", "best_below", "interpolate_at", "fit_gao", "gao_curve", "gao_peak_kl"]
