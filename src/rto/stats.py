"""Statistics shared by evaluation, the demo's report and the experiments: win rates and bootstrap
intervals over held-out prompts (and training seeds), and a method's numbers aggregated over its seeds.

Intervals are percentile bootstraps (2,000 resamples, fixed seed). The unit is the prompt: a prompt's
value is the mean over its samples, and prompts are resampled with replacement. With several training
seeds the bootstrap is two-level: seeds and prompts are resampled independently, so the interval carries
seed-to-seed variation too (with two or three seeds that part is crude). Differences between two methods
on the same prompts resample the prompts jointly (paired) and each side's seeds independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rto.errors import RtoError

METRICS = ("gold", "win", "kl", "length")


def win_outcomes(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per pair: 1 if a > b, 0.5 on a tie, 0 otherwise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise RtoError(f"win rate: {a.shape} values against {b.shape}")
    return (a > b) + 0.5 * (a == b)


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of pairs a wins, ties counting half."""
    return float(win_outcomes(a, b).mean())


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, conf: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of ``values``.

    ``values`` is (prompts,) or (seeds, prompts): with seeds, each resample draws the seeds and the
    prompts with replacement, independently (a two-level bootstrap). The point estimate is the plain
    mean; the interval is the percentile interval of the resampled means."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.size == 0:
        raise RtoError(f"bootstrap: expected a non-empty (seeds, prompts) array, got shape {v.shape}")
    G, P = v.shape
    rng = np.random.default_rng(seed)
    gi = rng.integers(G, size=(n_boot, G))
    pi = rng.integers(P, size=(n_boot, P))
    stats = v[gi[:, :, None], pi[:, None, :]].mean(axis=(1, 2))
    lo, hi = np.quantile(stats, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    return float(v.mean()), float(lo), float(hi)


def bootstrap_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, conf: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) for (seeds, prompts) arrays on the SAME prompts: prompts are
    resampled jointly (paired), each side's seeds independently."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1]:
        raise RtoError(f"paired bootstrap: {a.shape[1]} prompts against {b.shape[1]}")
    rng = np.random.default_rng(seed)
    P = a.shape[1]
    pi = rng.integers(P, size=(n_boot, P))
    ga = rng.integers(a.shape[0], size=(n_boot, a.shape[0]))
    gb = rng.integers(b.shape[0], size=(n_boot, b.shape[0]))
    stats = a[ga[:, :, None], pi[:, None, :]].mean(axis=(1, 2)) - b[gb[:, :, None], pi[:, None, :]].mean(
        axis=(1, 2)
    )
    lo, hi = np.quantile(stats, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def verdict(diff_ci: tuple[float, float, float], a: str, b: str) -> str:
    """'A > B', 'B > A' or 'no significant difference', read off a 95% interval of mean(A) - mean(B)."""
    _, lo, hi = diff_ci
    if lo > 0:
        return f"{a} > {b}"
    if hi < 0:
        return f"{b} > {a}"
    return "no significant difference"


def aggregate(results: list[dict], seed: int = 0) -> dict:
    """Mean and 95% interval of each per-prompt metric over the cells (one per seed) of one method."""
    out: dict = {"n_seeds": len(results), "single_seed": len(results) == 1}
    for m in METRICS:
        mat = np.stack([np.asarray(r["per_prompt"][m], dtype=float) for r in results])
        mean, lo, hi = bootstrap_ci(mat, seed=seed)
        out[m] = {"mean": mean, "ci": [lo, hi], "per_seed": [float(x) for x in mat.mean(1)]}
    if all("final_train_gold" in r for r in results):
        out["final_train_gold"] = float(np.mean([r["final_train_gold"] for r in results]))
    if all(r.get("time_per_iteration") for r in results):
        keys = results[0]["time_per_iteration"].keys()
        out["time_per_iteration"] = {
            k: float(np.mean([r["time_per_iteration"][k] for r in results])) for k in keys
        }
    if all("cpu_s" in r for r in results):
        # CPU seconds of the cell's process (training + evaluation): unlike wall time, barely moved by
        # other jobs sharing the machine
        out["cpu_s_per_run"] = float(np.mean([r["cpu_s"] for r in results]))
    if results[0].get("passes_per_iteration"):
        out["passes_per_iteration"] = results[0]["passes_per_iteration"]
    return out


def compare(a: list[dict], b: list[dict], name_a: str, name_b: str, seed: int = 0) -> dict:
    """Gold of A minus gold of B on the same held-out prompts: paired bootstrap, 95% interval, verdict."""
    ga = np.stack([np.asarray(r["per_prompt"]["gold"], dtype=float) for r in a])
    gb = np.stack([np.asarray(r["per_prompt"]["gold"], dtype=float) for r in b])
    d = bootstrap_diff_ci(ga, gb, seed=seed)
    return {
        "a": name_a,
        "b": name_b,
        "diff": d[0],
        "ci": [d[1], d[2]],
        "verdict": verdict(d, name_a, name_b),
        "single_seed": min(len(a), len(b)) == 1,
    }
