"""Group-baseline advantages: GRPO, RLOO, REINFORCE++-baseline and Dr. GRPO.

These estimators need no critic: each prompt is sampled K >= 2 times and the K responses (a
*group*) serve as each other's baseline. ``group_index`` (B,) says which group each row belongs
to (any integers; rows of a group need not be adjacent). Rewards are the (B, T) token rewards
the reward mode composed (RTO's dense DPO rewards, the KL penalty when it sits in the reward,
the reward-model score at the last token); masks are (B, T) and contiguous per row.

Two forms, chosen by ``level``:

- ``"sequence"``: the estimators as published, on each response's summed reward
  R_i = sum_t r_{i,t} (no discount); every token of response i gets the same advantage A_i.
  With dense rewards this keeps only the total, so RTO becomes DDPO (the same sum placed at the
  last token) and RS-PPO becomes PPO: the reward mode's token placement no longer matters.
- ``"token"``: the same formula applied per response position. With the return-to-go
  G_{i,t} = sum_{s >= t} gamma^(s - t) r_{i,s}, the baseline of token t of response i is built
  from the returns-to-go G_{j,t} of the other members of the group at the same position t, over
  the members whose response is still running there (has a token at t). A position that fewer
  than two members reach has no baseline and gets advantage 0. At the first token every member
  is running, so A_{i,0} equals the sequence-level advantage when gamma = 1; later tokens are
  credited with the rewards that follow them, which is what makes a dense reward count. This is
  a time-dependent baseline: for RLOO it depends only on the other samples, so where it exists
  it adds no bias (tokens past the second-longest response of their group get no gradient).

  Precedents: DeepSeekMath's process-supervision GRPO (Shao et al. 2024, arXiv 2402.03300,
  section 4.1.3) normalises each step reward by the group's mean and std and sums the
  normalised rewards that follow. PRIME (Cui et al. 2025, "Process Reinforcement through
  Implicit Rewards", arXiv 2502.01456) applies RLOO to implicit process rewards
  beta log pi_phi/pi_ref, the same quantity as RTO's DPO token reward: it subtracts from each
  token reward the leave-one-out mean of the other responses' average token reward, takes the
  discounted return, and adds a sequence-level RLOO term for the outcome reward. That baseline,
  (tokens left) x (others' mean token reward), depends on the response's own length; comparing
  returns-to-go at the same position does not, and needs no split of the reward into a dense
  and an outcome part.

Token-level rows must be right-padded (each row's valid tokens start at column 0), so that a
column is a response position. Group statistics are computed in float64 (float32 on MPS). A
group whose members are all equal (at a position, for the token form) gets advantage exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rto.algorithms.advantages import _stats_dtype, masked_whiten, reinforce_pp_returns
from rto.algorithms.logprobs import _as_bool

__all__ = [
    "GROUP_ESTIMATORS",
    "BASELINE_LEVELS",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_baseline_advantages",
    "dr_grpo_advantages",
    "group_advantages",
]

GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce++-baseline", "dr-grpo")
BASELINE_LEVELS = ("token", "sequence")


def _group_values(rewards: Tensor, mask: Tensor, level: str, gamma: float) -> tuple[Tensor, Tensor]:
    """The quantity the baseline acts on, x, and where it exists, present: (B, 1) or (B, T)."""
    if level not in BASELINE_LEVELS:
        raise ValueError(f"unknown baseline level {level!r}; expected one of {BASELINE_LEVELS}")
    mask = _as_bool(mask)
    if mask.dim() != 2 or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} must be the same (B, T)"
        )
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    if level == "sequence":
        r = torch.where(mask, rewards.to(dtype), torch.zeros((), dtype=dtype, device=rewards.device))
        return r.sum(-1, keepdim=True), mask.any(-1, keepdim=True)
    gaps = mask[:, 1:] & ~mask[:, :-1]  # a valid token after an invalid one
    if bool(gaps.any()):
        rows = gaps.any(-1).nonzero().flatten().tolist()
        raise ValueError(
            f"token-level group baselines compare response positions: rows {rows} are not right-padded "
            "(their valid tokens must start at column 0)"
        )
    return reinforce_pp_returns(rewards, mask, gamma), mask


class _GroupStats:
    """Statistics of x over the present members of each row's group, per column, gathered back to rows.

    n: members present; mean; dev = x - mean; var: unbiased variance (Bessel; 0 where n < 2).
    Where every present member has the same value, a lone member included, dev is exactly 0:
    no baseline (n = 1) or nothing to compare, so no advantage, and no division of rounding noise.
    """

    def __init__(self, x: Tensor, present: Tensor, group_index: Tensor):
        if group_index.shape != (x.shape[0],):
            raise ValueError(f"group_index has shape {tuple(group_index.shape)}, expected ({x.shape[0]},)")
        _, inverse = torch.unique(group_index, return_inverse=True)
        sizes = torch.bincount(inverse)
        if bool((sizes < 2).any()):
            small = sorted(set(group_index[(sizes < 2)[inverse]].tolist()))
            raise ValueError(f"group estimators need at least 2 samples per group; groups {small} have 1")
        n_groups = sizes.numel()
        sdt = _stats_dtype(x.device)
        zero = torch.zeros((), dtype=sdt, device=x.device)
        xs = torch.where(present, x.to(sdt), zero)

        def per_group(t: Tensor, reduce: str = "sum", fill: float = 0.0) -> Tensor:
            out = torch.full((n_groups, t.shape[1]), fill, dtype=sdt, device=x.device)
            if reduce == "sum":
                out.index_add_(0, inverse, t)
            else:
                out.scatter_reduce_(0, inverse.unsqueeze(1).expand_as(t), t, reduce)
            return out[inverse]

        inf = torch.full((), float("inf"), dtype=sdt, device=x.device)
        self.n = per_group(present.to(sdt))
        total = per_group(xs)
        self.mean = total / self.n.clamp(min=1)
        hi = per_group(torch.where(present, xs, -inf), "amax", -float("inf"))
        lo = per_group(torch.where(present, xs, inf), "amin", float("inf"))
        self.dev = torch.where(present & (hi != lo), xs - self.mean, zero)
        sq = per_group(self.dev * self.dev)
        self.var = torch.where(self.n >= 2, sq / (self.n - 1).clamp(min=1), zero)


def _to_tokens(adv: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1) or (B, T) advantages -> (B, T) in ``dtype``, 0 at padding."""
    mask = _as_bool(mask)
    out = adv.to(dtype).expand(mask.shape)
    return torch.where(mask, out, torch.zeros((), dtype=dtype, device=adv.device))


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return torch.promote_types(rewards.dtype, torch.float32)


def grpo_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_index: Tensor,
    level: str = "token",
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, section 4.1).

    A_i = (R_i - mean_group R) / (std_group R + eps), std unbiased (Bessel), as the common
    implementations compute it. Token form: R -> G_t and the statistics over the members running
    at position t (see the module docstring).
    """
    x, present = _group_values(rewards, mask, level, gamma)
    st = _GroupStats(x, present, group_index)
    adv = st.dev / (st.var.sqrt() + eps)
    return _to_tokens(adv, mask, _out_dtype(rewards))


def rloo_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_index: Tensor,
    level: str = "token",
    gamma: float = 1.0,
) -> Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", arXiv 2402.14740; Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!").

    A_i = R_i - 1/(K-1) sum_{j != i} R_j, the leave-one-out mean of the other K - 1 samples;
    equivalently K/(K-1) (R_i - mean_group R). Token form: R -> G_t over the other members
    running at position t.
    """
    x, present = _group_values(rewards, mask, level, gamma)
    st = _GroupStats(x, present, group_index)
    # x - (total - x) / (n - 1) = n / (n - 1) * (x - mean)
    adv = st.dev * st.n / (st.n - 1).clamp(min=1)
    return _to_tokens(adv, mask, _out_dtype(rewards))


def dr_grpo_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_index: Tensor,
    level: str = "token",
    gamma: float = 1.0,
) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv 2503.20783): A_i = R_i - mean_group R.

    GRPO without the division by the group's std (which up-weights prompts whose samples score
    alike). Its other half, dropping the 1/|y_i| length normalisation of the loss, is the loss
    aggregation ``seq-mean-token-sum-norm`` (see ``rto.algorithms.losses``).
    """
    x, present = _group_values(rewards, mask, level, gamma)
    st = _GroupStats(x, present, group_index)
    return _to_tokens(st.dev, mask, _out_dtype(rewards))


def reinforce_pp_baseline_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_index: Tensor,
    level: str = "token",
    gamma: float = 1.0,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++-baseline (Hu et al. 2025, "REINFORCE++", arXiv 2501.03262; OpenRLHF's
    ``reinforce_baseline``): A = whiten_batch(R_i - mean_group R).

    The group mean is subtracted first (the prompt-specific baseline), then the result is
    whitened over every valid token of the global batch (``masked_whiten``; pass ``reduce_fn`` to
    sum its statistics across processes). OpenRLHF subtracts the group mean from the outcome
    reward and then adds the per-token KL penalty before taking returns-to-go; here the baseline
    acts on the whole token reward, per position in the token form.
    """
    x, present = _group_values(rewards, mask, level, gamma)
    st = _GroupStats(x, present, group_index)
    centred = _to_tokens(st.dev, mask, _out_dtype(rewards))
    return masked_whiten(centred, mask, reduce_fn=reduce_fn)


def group_advantages(
    estimator: str,
    rewards: Tensor,
    mask: Tensor,
    group_index: Tensor,
    level: str = "token",
    gamma: float = 1.0,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Dispatch to the estimator named ``estimator`` (one of ``GROUP_ESTIMATORS``)."""
    if estimator == "grpo":
        return grpo_advantages(rewards, mask, group_index, level, gamma)
    if estimator == "rloo":
        return rloo_advantages(rewards, mask, group_index, level, gamma)
    if estimator == "dr-grpo":
        return dr_grpo_advantages(rewards, mask, group_index, level, gamma)
    if estimator == "reinforce++-baseline":
        return reinforce_pp_baseline_advantages(rewards, mask, group_index, level, gamma, reduce_fn)
    raise ValueError(f"unknown group estimator {estimator!r}; expected one of {GROUP_ESTIMATORS}")
