"""The advantage estimators rto offers, as a table of what each needs, and one entry point.

A trainer asks the table, not the estimator's name, whether to build and train a critic
(``needs_critic``) and whether to sample several responses per prompt (``needs_groups``);
``estimate_advantages`` then turns the composed token rewards into advantages and the
returns the critic regresses on (or that are logged, for the critic-free estimators).

========================  ======  ======  ===================================================
name                      critic  groups  advantage
========================  ======  ======  ===================================================
gae                       yes     no      GAE(gamma, lambda) with the critic, whitened over
                                          the batch (Schulman et al. 2016)
reinforce++               no      no      returns-to-go whitened over the batch (Hu 2025)
grpo                      no      yes     (R - group mean) / group std (DeepSeekMath)
rloo                      no      yes     R - mean of the other samples (Ahmadian et al. 2024)
reinforce++-baseline      no      yes     R - group mean, whitened over the batch (OpenRLHF)
dr-grpo                   no      yes     R - group mean (Liu et al. 2025); its loss
                                          aggregation is the constant normaliser
========================  ======  ======  ===================================================

The group estimators have a token-level and a sequence-level form (``level``); see
``rto.algorithms.group_advantages``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rto.algorithms.advantages import gae, masked_whiten, reinforce_pp_advantages, reinforce_pp_returns
from rto.algorithms.group_advantages import group_advantages

__all__ = ["Estimator", "ESTIMATORS", "estimate_advantages"]


@dataclass(frozen=True)
class Estimator:
    name: str
    needs_critic: bool  # a value model is trained and its values are the baseline
    needs_groups: bool  # needs K >= 2 samples of each prompt (a group index per sample)
    loss_aggregation: str  # the aggregation its source uses (see rto.algorithms.losses)


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator("gae", needs_critic=True, needs_groups=False, loss_aggregation="seq-mean-token-mean"),
        Estimator(
            "reinforce++", needs_critic=False, needs_groups=False, loss_aggregation="seq-mean-token-mean"
        ),
        Estimator("grpo", needs_critic=False, needs_groups=True, loss_aggregation="seq-mean-token-mean"),
        Estimator("rloo", needs_critic=False, needs_groups=True, loss_aggregation="seq-mean-token-mean"),
        Estimator(
            "reinforce++-baseline",
            needs_critic=False,
            needs_groups=True,
            loss_aggregation="seq-mean-token-mean",
        ),
        Estimator(
            "dr-grpo", needs_critic=False, needs_groups=True, loss_aggregation="seq-mean-token-sum-norm"
        ),
    )
}


def estimate_advantages(
    name: str,
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_index: Tensor | None = None,
    level: str = "token",
    gamma: float = 1.0,
    lam: float = 0.95,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both (B, T) and 0 at padding, for the estimator ``name``.

    ``values`` are needed when the estimator needs a critic, ``group_index`` (B,) when it needs
    groups. ``returns`` are GAE's A + V (the critic's target) for ``gae``, the whitened
    advantages for ``reinforce++`` (as it always reported), and the returns-to-go G_t for the
    group estimators. ``reduce_fn`` sums whitening statistics across processes when each process
    holds only its share of the batch (see ``masked_whiten``).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {tuple(ESTIMATORS)}")
    est = ESTIMATORS[name]
    if est.needs_critic and values is None:
        raise ValueError(f"estimator {name!r} needs the critic's values")
    if est.needs_groups and group_index is None:
        raise ValueError(f"estimator {name!r} needs a group index (several samples per prompt)")
    if name == "gae":
        adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        return masked_whiten(adv, mask, reduce_fn=reduce_fn), returns
    if name == "reinforce++":
        adv = reinforce_pp_advantages(rewards, mask, gamma=gamma, reduce_fn=reduce_fn)
        return adv, adv
    adv = group_advantages(name, rewards, mask, group_index, level=level, gamma=gamma, reduce_fn=reduce_fn)
    return adv, reinforce_pp_returns(rewards, mask, gamma)
