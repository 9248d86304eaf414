"""Token-wise rewards for PPO-style RLHF: RTO and the variants the paper compares.

RTO (Zhong et al., "DPO Meets PPO: Reinforced Token Optimization", arXiv 2404.18922) gives
every response token h = 1..H the reward

    r_h = beta1 * [log pi_dpo - log pi_ref](y_h)       dense DPO token reward
        - beta2 * [log pi_old - log pi_ref](y_h)       per-token KL penalty (k1)
        + 1[h = H] * beta3 * RM(x, y)                  sentence score at the last token

H is the last valid response token (EOS when emitted, else the last generated token).
The modes differ only in where the DPO token rewards d_h = beta1 * logratio_h are placed:

=========  =================================================================================
ppo        nowhere (beta1 ignored): -beta2*kl + beta3*RM at H
rto        d_h at every token h (dense)
semi-rto   each sentence's sum of d_h at that sentence's delimiter token; the tail after the
           last delimiter is summed at H
ddpo       sum_h d_h at H (sparse, same total as rto)
rs-ppo     rto plus -sum_h d_h at H (``shaping_correction``): every sequence's undiscounted
           return equals ppo's, so the DPO term acts purely as reward shaping
dpo-only   rto with beta3 = 0 (no reward model; ``rm_scores`` may be None)
=========  =================================================================================

``dpo_reward_clip`` (off by default; the RTO authors' code used 0.05 with beta1 = 0.05)
clamps each d_h to [-clip, clip] before it is placed, in every mode that uses it.
Nothing is ever written to an invalid (padding) position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rto.algorithms.logprobs import _as_bool

__all__ = ["REWARD_MODES", "TokenRewards", "last_token_index", "compose_token_rewards"]

REWARD_MODES = ("ppo", "rto", "semi-rto", "ddpo", "rs-ppo", "dpo-only")

_NEEDS_DPO = {"rto", "semi-rto", "ddpo", "rs-ppo", "dpo-only"}
_NEEDS_RM = {"ppo", "rto", "semi-rto", "ddpo", "rs-ppo"}


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last valid position of each row, (B, T) -> LongTensor (B,).

    Raises ValueError if a row has no valid token (an empty response has no action to reward).
    """
    mask = _as_bool(mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    empty = ~mask.any(-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no valid token; cannot place a last-token reward")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).amax(-1)


@dataclass
class TokenRewards:
    """The parts of the token reward, each (B, T) and zero at padding; ``total`` is their sum.

    kl: -beta2 * kl. dpo: the DPO token rewards as placed by the mode. score: beta3 * RM at the
    last token. shaping_correction: rs-ppo's -sum(DPO rewards) at the last token (else zeros).
    """

    total: Tensor
    kl: Tensor
    dpo: Tensor
    score: Tensor
    shaping_correction: Tensor


def _segment_sums_at_ends(values: Tensor, mask: Tensor, ends: Tensor) -> Tensor:
    """Sum ``values`` over each segment of valid tokens and put the sum at the segment's end.

    A segment runs from just after the previous end (or the row start) up to and including
    the next position where ``ends`` is True. Every valid token must have an end at or after
    it (callers include the last valid token in ``ends``). Vectorised: the index of the next
    end is a reversed cumulative minimum, then one scatter_add.
    """
    B, T = values.shape
    positions = torch.arange(T, device=values.device).expand(B, T)
    end_or_inf = torch.where(ends, positions, T)
    next_end = end_or_inf.flip(-1).cummin(-1).values.flip(-1)
    target = torch.where(mask, next_end, 0)
    src = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return torch.zeros_like(values).scatter_add_(1, target, src)


def compose_token_rewards(
    mode: str,
    mask: Tensor,
    kl: Tensor,
    rm_scores: Tensor | None = None,
    dpo_logratio: Tensor | None = None,
    beta1: float = 0.05,
    beta2: float = 0.01,
    beta3: float = 1.0,
    dpo_reward_clip: float | None = None,
    sentence_end_mask: Tensor | None = None,
) -> TokenRewards:
    """Build the (B, T) token rewards of ``mode`` (one of ``REWARD_MODES``; see module doc).

    Args:
        mask: (B, T) valid response tokens, contiguous; every row needs at least one.
        kl: (B, T) per-token KL estimate, log pi_old - log pi_ref of the sampled tokens.
        rm_scores: (B,) reward-model scores, already normalised/clamped by the caller.
        dpo_logratio: (B, T) log pi_dpo - log pi_ref of the sampled tokens.
        sentence_end_mask: (B, T) True at sentence delimiter tokens (semi-rto only);
            positions outside ``mask`` are ignored.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}; expected one of {REWARD_MODES}")
    for name, val in (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)):
        if val < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if dpo_reward_clip is not None and dpo_reward_clip <= 0:
        raise ValueError(f"dpo_reward_clip must be > 0 or None, got {dpo_reward_clip}")
    if mode in _NEEDS_DPO and dpo_logratio is None:
        raise ValueError(f"reward mode {mode!r} needs dpo_logratio (log pi_dpo - log pi_ref)")
    if mode in _NEEDS_RM and rm_scores is None:
        raise ValueError(f"reward mode {mode!r} needs rm_scores")
    if mode == "semi-rto" and sentence_end_mask is None:
        raise ValueError("reward mode 'semi-rto' needs sentence_end_mask")

    mask = _as_bool(mask)
    B, T = mask.shape
    for name, t in (("kl", kl), ("dpo_logratio", dpo_logratio), ("sentence_end_mask", sentence_end_mask)):
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(mask.shape)} like mask")
    if rm_scores is not None and mode in _NEEDS_RM and rm_scores.shape != (B,):
        raise ValueError(f"rm_scores has shape {tuple(rm_scores.shape)}, expected ({B},)")

    dtype = torch.promote_types(kl.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=kl.device)
    last = last_token_index(mask)
    at_last = torch.zeros_like(mask).scatter_(1, last.unsqueeze(1), True)

    kl_part = -beta2 * torch.where(mask, kl.to(dtype), zero)

    if mode in _NEEDS_RM:
        score = torch.where(at_last, beta3 * rm_scores.to(dtype).unsqueeze(1), zero)
    else:
        score = torch.zeros_like(kl_part)

    if mode == "ppo":
        dpo = torch.zeros_like(kl_part)
    else:
        dense = beta1 * torch.where(mask, dpo_logratio.to(dtype), zero)
        if dpo_reward_clip is not None:
            dense = dense.clamp(-dpo_reward_clip, dpo_reward_clip)
        if mode == "semi-rto":
            ends = (_as_bool(sentence_end_mask) & mask) | at_last
            dpo = _segment_sums_at_ends(dense, mask, ends)
        elif mode == "ddpo":
            dpo = torch.where(at_last, dense.sum(-1, keepdim=True), zero)
        else:  # rto, rs-ppo, dpo-only
            dpo = dense

    if mode == "rs-ppo":
        shaping = torch.where(at_last, -dpo.sum(-1, keepdim=True), zero)
    else:
        shaping = torch.zeros_like(kl_part)

    total = kl_part + dpo + score + shaping
    return TokenRewards(total=total, kl=kl_part, dpo=dpo, score=score, shaping_correction=shaping)
