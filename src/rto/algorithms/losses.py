"""Training losses: SFT, Bradley-Terry reward model, DPO family, TDPO, and PPO actor/critic.

All functions take tensors and return tensors (plus detached logging stats where noted).
Sequence log-probs (``*_logps``) are sums of token log-probs over the response unless a
docstring says otherwise; see ``rto.algorithms.logprobs.sequence_logps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rto.algorithms.kl import kl_penalty
from rto.algorithms.logprobs import _as_bool, masked_mean

__all__ = [
    "DPO_LOSS_TYPES",
    "sft_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "tdpo_loss",
    "sequential_kl",
    "ppo_policy_loss",
    "value_loss",
]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "simpo", "rdpo")


# --------------------------------------------------------------------------- supervised / RM


def sft_loss(token_logps: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean negative log-likelihood over completion tokens.

    Token-level mean over the whole batch (every completion token weighs the same, so long
    answers weigh more than short ones, as in ordinary LM training). 0 if no token is valid.
    """
    return -masked_mean(token_logps, loss_mask)


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Reward-model loss under the Bradley-Terry model P(c > r) = sigmoid(s_c - s_r).

    Returns ``(mean of -log sigmoid(s_c - s_r), accuracy)`` where accuracy is the detached
    fraction of pairs with s_c > s_r (ties count as wrong).
    """
    margin = chosen_scores - rejected_scores
    loss = -F.logsigmoid(margin).mean()
    acc = (margin.detach() > 0).float().mean()
    return loss, acc


# --------------------------------------------------------------------------- DPO family


def _smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - ls) log sigmoid(z) - ls log sigmoid(-z): cDPO (Mitchell 2023, "A note on DPO with
    noisy preferences"), i.e. BCE against a label that is flipped with probability ls."""
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    simpo_gamma: float = 0.5,
    rdpo_alpha: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor]:
    """Offline preference losses; returns ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``.

    Notation: pc, pr = policy chosen/rejected sequence log-probs, rc, rr = reference ones,
    h = (pc - rc) - (pr - rr), ls = ``label_smoothing``, |y| = response length in tokens.

    - ``"sigmoid"`` DPO (Rafailov et al. 2023, arXiv 2305.18290), with cDPO label smoothing:
      loss = -(1 - ls) log s(beta h) - ls log s(-beta h).
    - ``"ipo"`` IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
      from Human Preferences", arXiv 2310.12036): loss = (h - 1/(2 beta))^2.
      The paper's h is a difference of log-ratios; pass length-averaged log-probs if you want
      the per-token variant some implementations use. ``label_smoothing`` is ignored.
    - ``"simpo"`` SimPO (Meng et al. 2024, arXiv 2405.14734), reference-free:
      loss = -(1 - ls) log s(m) - ls log s(-m), m = beta (pc/|y_c| - pr/|y_r|) - gamma,
      gamma = ``simpo_gamma`` (the target reward margin). When ``chosen_lengths`` and
      ``rejected_lengths`` are given the policy log-probs are sums and are divided by them;
      when both are None the policy log-probs must already be length-normalised. The
      reference log-probs are ignored (may be None). The SimPO paper uses beta around 2.0;
      we take beta as given. Rewards are beta * (normalised log-prob).
    - ``"rdpo"`` R-DPO (Park et al. 2024, "Disentangling Length from Quality in Direct
      Preference Optimization", arXiv 2403.19159): DPO with a length regulariser,
      m = beta h - alpha (|y_c| - |y_r|), alpha = ``rdpo_alpha``; loss as for sigmoid with m.
      Needs ``chosen_lengths`` and ``rejected_lengths``.

    Rewards (detached) are the implicit DPO rewards beta (pc - rc) and beta (pr - rr), except
    for SimPO (see above).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")

    if loss_type == "simpo":
        if (chosen_lengths is None) != (rejected_lengths is None):
            raise ValueError("simpo: give both chosen_lengths and rejected_lengths, or neither")
        pc, pr = policy_chosen_logps, policy_rejected_logps
        if chosen_lengths is not None:
            pc = pc / chosen_lengths.to(pc.dtype).clamp(min=1)
            pr = pr / rejected_lengths.to(pr.dtype).clamp(min=1)
        margin = beta * (pc - pr) - simpo_gamma
        losses = _smoothed_sigmoid_loss(margin, label_smoothing)
        return losses, (beta * pc).detach(), (beta * pr).detach()

    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"loss_type {loss_type!r} needs ref_chosen_logps and ref_rejected_logps")
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio

    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid_loss(beta * h, label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # rdpo
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("rdpo needs chosen_lengths and rejected_lengths")
        length_gap = (chosen_lengths - rejected_lengths).to(h.dtype)
        losses = _smoothed_sigmoid_loss(beta * h - rdpo_alpha * length_gap, label_smoothing)
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def sequential_kl(
    policy_logits: Tensor, ref_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Sequential KL D_SeqKL(x, y; pi_ref || pi) = sum_t KL(pi_ref(.|s_t) || pi(.|s_t)), (B,).

    This is the direction TDPO uses (Zeng et al. 2024, arXiv 2404.11999, section 4: the
    "forward KL" constraint of each token): the reference distribution is the first argument. ``policy_logits`` and
    ``ref_logits`` are (B, T, V) already aligned with the response positions of ``mask``
    (i.e. the logits that score the response tokens, after the causal shift). Computed in
    float32; gradients flow into ``policy_logits`` only through log pi.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pl = policy_logits.float() / temperature
    rl = ref_logits.float() / temperature
    ref_logp = torch.log_softmax(rl, dim=-1)
    pol_logp = torch.log_softmax(pl, dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - pol_logp)).sum(-1)
    mask = _as_bool(mask)
    return torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)).sum(
        -1
    )


def tdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_seq_kl: Tensor,
    rejected_seq_kl: Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    version: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Token-level DPO (Zeng et al. 2024, "Token-level Direct Preference Optimization",
    arXiv 2404.11999, section 4); returns ``(losses, chosen_rewards, rejected_rewards)``.

    u = beta (pc - rc) - beta (pr - rr)   (the DPO margin)
    TDPO1: loss = -log s(u - delta),      delta = beta kl_r - beta kl_c
    TDPO2: loss = -log s(u - alpha delta2), delta2 = beta kl_r - stopgrad(beta kl_c)
    where kl_c, kl_r are the sequential KLs D_SeqKL(pi_ref || pi) of the chosen and rejected
    responses (see ``sequential_kl``). Rewards are the detached implicit rewards
    beta (pc - rc), beta (pr - rr), as for DPO, so that the methods' rewards compare.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if version not in (1, 2):
        raise ValueError(f"TDPO version must be 1 or 2, got {version}")
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    u = beta * (chosen_logratio - rejected_logratio)
    if version == 1:
        margin = u - beta * (rejected_seq_kl - chosen_seq_kl)
    else:
        margin = u - alpha * (beta * rejected_seq_kl - (beta * chosen_seq_kl).detach())
    losses = -F.logsigmoid(margin)
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


# --------------------------------------------------------------------------- PPO


def _seq_then_batch_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Average over the valid tokens of each row, then over rows that have a valid token.

    Every sequence weighs the same regardless of its length (SPEC: "averaged over tokens
    within each sequence, then over sequences"). 0 (still in the graph) if no row is valid.
    """
    mask = _as_bool(mask)
    row_mean = masked_mean(per_token, mask, dim=-1)
    has_token = mask.any(-1)
    return masked_mean(row_mean, has_token)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict]:
    """Clipped surrogate (Schulman et al. 2017), per token: -min(r A, clip(r, 1-eps, 1+eps) A).

    r = exp(logprobs - old_logprobs). Averaged over tokens within each sequence, then over
    sequences. Stats (detached scalars, over valid tokens):

    - ``clipfrac``: fraction of tokens where the clipped term is the active (strictly larger)
      loss, i.e. where clipping changed the loss and zeroed the gradient;
    - ``approx_kl``: the k3 estimator r - 1 - log r of KL(pi_old || pi) (unbiased, >= 0);
    - ``ratio_mean``: mean of r.
    """
    mask = _as_bool(mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(mask, logprobs - old_logprobs, zero)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = _seq_then_batch_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(kl_penalty(old_logprobs, logprobs, "k3").float(), mask),
            "ratio_mean": masked_mean(ratio.float(), mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
) -> tuple[Tensor, dict]:
    """Clipped value loss: 0.5 max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2).

    Averaged over tokens within each sequence, then over sequences. ``clip_range=None`` gives
    the plain 0.5 (v - R)^2. Stats: ``vf_clipfrac`` = fraction of valid tokens where the
    clipped error is the larger one and the clamp is active (0 without clipping).
    """
    mask = _as_bool(mask)
    err = (values - returns) ** 2
    if clip_range is None:
        per_token = 0.5 * err
        clipfrac = torch.zeros((), device=values.device)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err_clipped = (v_clipped - returns) ** 2
        per_token = 0.5 * torch.maximum(err, err_clipped)
        with torch.no_grad():
            # Only where the clamp is active: elsewhere v_clipped equals v up to rounding, and counting
            # rounding noise would report clipping that did not happen.
            active = (values - old_values).abs() > clip_range
            clipfrac = masked_mean((active & (err_clipped > err)).float(), mask)
    loss = _seq_then_batch_mean(per_token, mask)
    return loss, {"vf_clipfrac": clipfrac.detach()}
