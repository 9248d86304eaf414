"""Seeds -> mean and 95% interval, and the compute each method spends per iteration.

Every number an experiment reports for a method is the mean over its seed cells with a 95% two-level
bootstrap interval (seeds and held-out prompts resampled independently; rto.eval.bootstrap_ci). With one
seed the interval covers prompt noise only, and the entry says ``single_seed: true``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS = ("gold", "win", "kl", "length")


def aggregate(results: list[dict], seed: int = 0) -> dict:
    """Mean and 95% interval of each per-prompt metric over the cells (one per seed) of one method."""
    from rto.eval import bootstrap_ci

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
    from rto.eval import bootstrap_diff_ci, verdict

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


def passes_per_iteration(
    mode: str,
    advantage: str,
    ppo_epochs: int,
    rollout_batch_size: int,
    mini_batch_size: int,
    max_new_tokens: int,
) -> dict:
    """Model passes one PPO/RTO iteration makes, counted from the trainer's structure (rto.trainers.ppo).

    Units: a *sequence pass* is one forward (or backward) of one model over the whole rollout batch of
    prompt+response sequences; generation is counted separately as ``max_new_tokens`` incremental
    (KV-cached) policy forwards over the batch, an upper bound reached when no sequence stops early.

    * scoring (no grad): policy (old log-probs), reference, DPO model (every mode but PPO), critic values
      (advantage 'gae' only), reward model (every mode but dpo-only);
    * training, per PPO epoch: policy forward + backward, and critic forward + backward with 'gae'
      (mini-batches split the batch, they do not add passes).

    ``forward_equivalents`` weighs a backward as two forwards (the usual estimate) and leaves generation
    out (its cost depends on the response length, which the wall-clock times capture)."""
    gae = advantage == "gae"
    scoring = {
        "policy": 1,
        "reference": 1,
        "dpo": int(mode != "ppo"),
        "critic": int(gae),
        "reward_model": int(mode != "dpo-only"),
    }
    train_fwd = ppo_epochs * (1 + int(gae))
    train_bwd = ppo_epochs * (1 + int(gae))
    score = sum(scoring.values())
    return {
        "generation_token_forwards": max_new_tokens,
        "scoring_forwards": scoring,
        "scoring_forwards_total": score,
        "train_forwards": train_fwd,
        "train_backwards": train_bwd,
        "optimizer_steps": ppo_epochs * (rollout_batch_size // mini_batch_size) * (1 + int(gae)),
        "forward_equivalents": score + train_fwd + 2 * train_bwd,
    }


def time_per_iteration(metrics_path: str | Path) -> dict:
    """Mean wall-clock seconds per iteration by phase, read from a PPO run's metrics.jsonl. The first
    iteration is left out when there are more than two (it pays one-off warm-up costs)."""
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "time_generate_s" in r]
    if len(rows) > 2:
        rows = rows[1:]
    if not rows:
        return {}
    out = {k: float(np.mean([r[f"time_{k}_s"] for r in rows])) for k in ("generate", "score", "train")}
    out["total"] = out["generate"] + out["score"] + out["train"]
    return out
