"""The compute each RL method spends per iteration: model passes counted from the trainer's structure,
and wall-clock seconds per phase read from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rto.algorithms.estimators import ESTIMATORS


def passes_per_iteration(
    mode: str,
    advantage: str,
    ppo_epochs: int,
    rollout_batch_size: int,
    mini_batch_size: int,
    max_new_tokens: int,
    samples_per_prompt: int = 1,
) -> dict:
    """Model passes one PPO/RTO iteration makes, counted from the trainer's structure (rto.trainers.ppo).

    Units: a *sequence pass* is one forward (or backward) of one model over the whole rollout batch of
    prompt+response sequences; generation is counted separately as ``max_new_tokens`` incremental
    (KV-cached) policy forwards over the batch, an upper bound reached when no sequence stops early.

    * scoring (no grad): policy (old log-probs), reference, DPO model (every mode but PPO), critic values
      (estimators with a critic: 'gae'), reward model (every mode but dpo-only);
    * training, per PPO epoch: policy forward + backward, and critic forward + backward with a critic
      (mini-batches split the batch, they do not add passes).

    The rollout batch holds ``rollout_batch_size`` prompts x ``samples_per_prompt`` responses.

    ``forward_equivalents`` weighs a backward as two forwards (the usual estimate) and leaves generation
    out (its cost depends on the response length, which the wall-clock times capture)."""
    gae = ESTIMATORS[advantage].needs_critic
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
        "optimizer_steps": ppo_epochs
        * (rollout_batch_size * samples_per_prompt // mini_batch_size)
        * (1 + int(gae)),
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
