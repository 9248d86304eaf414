"""Per-token KL estimators and KL-coefficient controllers for the RL reward.

The estimators follow J. Schulman, "Approximating KL Divergence" (2020). With samples
y ~ pi (the policy that generated them) and r = pi_ref(y)/pi(y):

- k1 = log pi - log pi_ref          unbiased, high variance, can be negative per token
- k2 = 0.5 * (log pi - log pi_ref)^2  biased, low variance, always >= 0
- k3 = r - 1 - log r                 unbiased, low variance, always >= 0

RTO (and standard RLHF PPO) uses k1 inside the token reward: summed over a response it is
exactly log pi(y|x) - log pi_ref(y|x), whose expectation is the sequence-level KL.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_penalty", "FixedKLController", "AdaptiveKLController"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate from sampled-token log-probs, elementwise.

    ``logps`` are log pi of the sampled tokens (the rollout policy), ``ref_logps`` log pi_ref.
    Padding positions are not masked here: mask the result (or its inputs) yourself.
    """
    logr = ref_logps - logps  # log(pi_ref / pi)
    if kind == "k1":
        return -logr
    if kind == "k2":
        return 0.5 * logr**2
    if kind == "k3":
        # expm1 keeps precision when the ratio is close to 1.
        return torch.expm1(logr) - logr
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected one of {KL_ESTIMATORS}")


class FixedKLController:
    """A constant KL coefficient with the controller interface (``update`` is a no-op)."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target``.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. (2):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    ``n_steps`` is the number of samples (or steps, consistently) since the last update.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
