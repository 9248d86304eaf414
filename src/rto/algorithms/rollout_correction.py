"""Correcting for the gap between the engine that sampled a rollout and the trainer that learns from it.

When rollouts come from an inference engine (vLLM) instead of the trainer's own model, the engine's
probabilities of the sampled tokens differ a little from the trainer's, even with the same weights:
other kernels, other precision (bf16), and the engine's own sampling filters (the banned pad token,
top-p). The samples are then slightly off-policy for the trainer.

Truncated importance sampling (TIS) reweights each token's policy-gradient term by

    w_t = min(pi_trainer(y_t) / pi_engine(y_t), C)

computed once per rollout, with the trainer's log-probs of the policy that sampled (the PPO "old"
log-probs), and treated as a constant (no gradient). The cap C bounds the variance a rare token with a
tiny engine probability would otherwise add. Because the clipped PPO surrogate is positively homogeneous
in the advantage (w * min(r A, clip(r) A) = min(r wA, clip(r) wA) for w >= 0), weighting the per-token
loss by w is the same as weighting the advantage, which is how the trainer applies it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rto.algorithms.logprobs import _as_bool

__all__ = ["truncated_is_weights", "logprob_mismatch"]


def truncated_is_weights(trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Per-token weights min(exp(trainer_logps - engine_logps), cap), detached; 0 at invalid positions.

    ``trainer_logps`` and ``engine_logps`` are (B, R) log-probs of the sampled tokens, ``mask`` marks the
    valid response tokens. Values at invalid positions are ignored (they may be anything, NaN included).
    """
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be positive, got {cap}")
    mask = _as_bool(mask)
    zero = torch.zeros((), dtype=trainer_logps.dtype, device=trainer_logps.device)
    log_w = torch.where(mask, trainer_logps.detach() - engine_logps.detach().to(trainer_logps.dtype), zero)
    w = log_w.exp().clamp(max=cap)
    return torch.where(mask, w, zero)


def logprob_mismatch(trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean and max |trainer - engine| log-prob over valid tokens (0 when there is none)."""
    mask = _as_bool(mask)
    diff = (trainer_logps.detach().double() - engine_logps.detach().double()).abs()[mask]
    if diff.numel() == 0:
        return {"logp_mismatch_mean": 0.0, "logp_mismatch_max": 0.0}
    return {"logp_mismatch_mean": float(diff.mean()), "logp_mismatch_max": float(diff.max())}
