"""Training losses: SFT, Bradley-Terry reward model, DPO family, TDPO, and PPO actor/critic.

All functions take tensors and return tensors (plus detached logging stats where noted).
Sequence log-probs (``*_logps``) are sums of token log-probs over the response unless a
docstring says otherwise; see ``rto.algorithms.logprobs.sequence_logps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rto.algorithms.kl import kl_penalty
from rto.algorithms.logprobs import _as_bool, masked_mean

__all__ = [
    "DPO_LOSS_TYPES",
    "sft_loss",
    "bradley_terry_loss",
    "reward_centering",
    "dpo_loss",
    "tdpo_loss",
    "sequential_kl",
    "LOSS_AGGREGATIONS",
    "LossSum",
    "aggregation_count",
    "aggregate_loss",
    "policy_loss_sum",
    "ppo_policy_loss",
    "value_loss_sum",
    "value_loss",
]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "simpo", "rdpo")


# --------------------------------------------------------------------------- supervised / RM


def sft_loss(token_logps: Tensor, loss_mask: Tensor) -> LossSum:
    """Negative log-likelihood of the completion tokens, as a sum over them and their count.

    ``.mean()`` is the token-level mean over the batch (every completion token weighs the same, so
    long answers weigh more than short ones, as in ordinary LM training; 0 if no token is valid). A
    trainer divides the sums of every micro-batch by the global token count instead.
    """
    mask = loss_mask.to(token_logps.dtype)
    return LossSum(-(token_logps * mask).sum(), mask.sum().detach())


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[LossSum, Tensor]:
    """Reward-model loss under the Bradley-Terry model P(c > r) = sigmoid(s_c - s_r).

    Returns ``(LossSum of -log sigmoid(s_c - s_r) over the pairs, correct)`` where ``correct`` is
    the detached number of pairs with s_c > s_r (ties count as wrong); ``.mean()`` of the first is
    the mean loss, ``correct / len(pairs)`` the accuracy.
    """
    margin = chosen_scores - rejected_scores
    total = -F.logsigmoid(margin).sum()
    correct = (margin.detach() > 0).to(margin.dtype).sum()
    pairs = torch.full((), float(margin.numel()), dtype=margin.dtype, device=margin.device)
    return LossSum(total, pairs), correct


def reward_centering(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """(s_c + s_r)^2 per pair (Eisenstein et al. 2023, "Helping or Herding?", arXiv 2312.09244; TRL's
    ``center_rewards_coefficient``): pulls each pair's mean score to 0 and leaves the margin s_c - s_r,
    which is all the Bradley-Terry loss sees, free. (A penalty on s_c^2 + s_r^2 would also shrink the
    margin, working against the preference loss.)"""
    return (chosen_scores + rejected_scores) ** 2


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
    ipo_per_token: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Offline preference losses; returns ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``.

    Notation: pc, pr = policy chosen/rejected sequence log-probs, rc, rr = reference ones,
    h = (pc - rc) - (pr - rr), ls = ``label_smoothing``, |y| = response length in tokens.

    - ``"sigmoid"`` DPO (Rafailov et al. 2023, arXiv 2305.18290), with cDPO label smoothing:
      loss = -(1 - ls) log s(beta h) - ls log s(-beta h).
    - ``"ipo"`` IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
      from Human Preferences", arXiv 2310.12036, eq. 17): loss = (h - 1/(2 beta))^2, h from the
      summed log-probs as in the paper's equation. With ``ipo_per_token`` each log-ratio is first
      divided by its response length, h = (pc - rc)/|y_c| - (pr - rr)/|y_r| (the form of the IPO
      authors' experiments and of TRL); it needs ``chosen_lengths`` and ``rejected_lengths``.
      ``label_smoothing`` is ignored.
    - ``"simpo"`` SimPO (Meng et al. 2024, arXiv 2405.14734), reference-free:
      loss = -(1 - ls) log s(m) - ls log s(-m), m = beta (pc/|y_c| - pr/|y_r|) - gamma,
      gamma = ``simpo_gamma`` (the target reward margin). When ``chosen_lengths`` and
      ``rejected_lengths`` are given the policy log-probs are sums and are divided by them;
      when both are None the policy log-probs must already be length-normalised. The
      reference log-probs are ignored (may be None). The SimPO paper uses beta around 2.0;
      we take beta as given. Rewards are beta * (normalised log-prob).
    - ``"rdpo"`` R-DPO (Park et al. 2024, "Disentangling Length from Quality in Direct
      Preference Optimization", arXiv 2403.19159, eq. 9): DPO with a length regulariser,
      m = beta h + alpha (|y_c| - |y_r|), alpha = ``rdpo_alpha``; loss as for sigmoid with m.
      A chosen response longer than its rejected one already has part of its preference explained
      by length, so the pair is pushed less (and a shorter chosen one more): the policy is not
      rewarded for length. Needs ``chosen_lengths`` and ``rejected_lengths``.

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
        if ipo_per_token:
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("ipo_per_token needs chosen_lengths and rejected_lengths")
            h = chosen_logratio / chosen_lengths.to(h.dtype).clamp(min=1) - rejected_logratio / (
                rejected_lengths.to(h.dtype).clamp(min=1)
            )
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # rdpo
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("rdpo needs chosen_lengths and rejected_lengths")
        length_gap = (chosen_lengths - rejected_lengths).to(h.dtype)
        losses = _smoothed_sigmoid_loss(beta * h + rdpo_alpha * length_gap, label_smoothing)
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

# How a per-token loss becomes one number (each as "a sum and the count it is divided by"):
LOSS_AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


@dataclass
class LossSum:
    """A loss kept as a sum and the count it is to be divided by.

    A trainer adds ``total`` over micro-batches and processes and divides by the global
    ``count`` of the mini-batch, so the update does not depend on how the mini-batch is split.
    ``count`` is detached (tokens or sequences, see ``aggregate_loss``).
    """

    total: Tensor
    count: Tensor

    def mean(self) -> Tensor:
        """``total / count`` over this batch alone (0 if the count is 0)."""
        return self.total / self.count.clamp(min=1).to(self.total.dtype)


def aggregation_count(mask: Tensor, aggregation: str) -> Tensor:
    """What ``aggregate_loss`` divides by: valid tokens for ``token-mean``, else sequences with a valid
    token. A trainer takes it over the whole global mini-batch (float, no grad)."""
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; expected one of {LOSS_AGGREGATIONS}")
    mask = _as_bool(mask)
    count = mask.sum() if aggregation == "token-mean" else mask.any(-1).sum()
    return count.detach().to(torch.float32)


def aggregate_loss(
    per_token: Tensor, mask: Tensor, aggregation: str = "seq-mean-token-mean", norm_length: int | None = None
) -> LossSum:
    """Reduce a (B, T) per-token loss to a ``LossSum`` over the valid tokens of ``mask``.

    - ``"seq-mean-token-mean"``: each sequence's token mean, then the mean over sequences
      (every sequence weighs the same whatever its length). total = sum_i mean_t l_it,
      count = sequences with at least one valid token. GRPO's objective (DeepSeekMath) is
      written this way; it is rto's default.
    - ``"token-mean"``: the mean over every valid token of the batch (long sequences weigh
      more), DAPO's "token-level policy gradient loss" (Yu et al. 2025, arXiv 2503.14476).
      total = sum_it l_it, count = valid tokens.
    - ``"seq-mean-token-sum-norm"``: Dr. GRPO's constant normaliser (Liu et al. 2025, arXiv
      2503.20783): each sequence's token sum divided by the constant ``norm_length`` (the
      generation budget, max new tokens), then the mean over sequences. total =
      sum_i sum_t l_it / norm_length, count = sequences. Needs ``norm_length``.
    """
    count = aggregation_count(mask, aggregation).to(per_token.dtype)
    mask = _as_bool(mask)
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    masked = torch.where(mask, per_token, zero)
    if aggregation == "token-mean":
        return LossSum(masked.sum(), count)
    if aggregation == "seq-mean-token-mean":
        row_mean = masked.sum(-1) / mask.sum(-1).clamp(min=1).to(per_token.dtype)
        return LossSum(row_mean.sum(), count)
    if norm_length is None or norm_length <= 0:
        raise ValueError(f"seq-mean-token-sum-norm needs a positive norm_length, got {norm_length}")
    return LossSum(masked.sum() / norm_length, count)


def policy_loss_sum(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    norm_length: int | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[LossSum, dict]:
    """Clipped surrogate (Schulman et al. 2017), per token: -min(r A, clip(r, 1-eps, 1+eps) A),
    plus ``kl_coef * KL`` when ``ref_logprobs`` is given; aggregated by ``aggregate_loss``.

    r = exp(logprobs - old_logprobs). The KL term is the per-token estimator ``kl_estimator`` of
    KL(pi || pi_ref) at the sampled tokens, as GRPO puts it in the loss (k3 there) instead of in
    the reward; its gradient flows through ``logprobs``. Stats (detached scalars, token means
    over valid tokens):

    - ``clipfrac``: fraction of tokens where the clipped term is the active (strictly larger)
      loss, i.e. where clipping changed the loss and zeroed the gradient;
    - ``approx_kl``: the k3 estimator r - 1 - log r of KL(pi_old || pi) (unbiased, >= 0);
    - ``ratio_mean``: mean of r;
    - ``kl_loss``: mean of the KL term's estimator (only with ``ref_logprobs``).
    """
    mask = _as_bool(mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(mask, logprobs - old_logprobs, zero)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    kl = None
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, torch.where(mask, ref_logprobs, logprobs), kl_estimator)
        per_token = per_token + kl_coef * kl
    loss = aggregate_loss(per_token, mask, aggregation, norm_length)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(kl_penalty(old_logprobs, logprobs, "k3").float(), mask),
            "ratio_mean": masked_mean(ratio.float(), mask),
        }
        if kl is not None:
            stats["kl_loss"] = masked_mean(kl.float(), mask)
    return loss, stats


def ppo_policy_loss(*args, **kwargs) -> tuple[Tensor, dict]:
    """``policy_loss_sum`` as a mean over the given batch alone (same arguments): for code that sees a
    whole batch at once. A trainer that splits a mini-batch over micro-batches or processes divides the
    sums by the global count instead."""
    loss, stats = policy_loss_sum(*args, **kwargs)
    return loss.mean(), stats


def value_loss_sum(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
    aggregation: str = "seq-mean-token-mean",
    norm_length: int | None = None,
) -> tuple[LossSum, dict]:
    """Clipped value loss: 0.5 max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2), aggregated
    by ``aggregate_loss``.

    ``clip_range=None`` gives the plain 0.5 (v - R)^2. Stats: ``vf_clipfrac`` = fraction of valid
    tokens where the clipped error is the larger one and the clamp is active (0 without clipping).
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
    loss = aggregate_loss(per_token, mask, aggregation, norm_length)
    return loss, {"vf_clipfrac": clipfrac.detach()}


def value_loss(*args, **kwargs) -> tuple[Tensor, dict]:
    """``value_loss_sum`` as a mean over the given batch alone (same arguments; see ``ppo_policy_loss``)."""
    loss, stats = value_loss_sum(*args, **kwargs)
    return loss.mean(), stats
