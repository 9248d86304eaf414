"""Advantage estimation: GAE, REINFORCE++ returns, batch whitening, explained variance.

Masks are (B, T) and must be contiguous per row (the response span); the value after the
last valid token is 0: EOS is absorbing, and a truncated response is also treated as
terminal (its continuation is never rewarded, so bootstrapping from V would invent value).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rto.algorithms.logprobs import _as_bool, masked_var

__all__ = [
    "masked_whiten",
    "gae",
    "reinforce_pp_returns",
    "reinforce_pp_advantages",
    "explained_variance",
]

# Above this length the discount matrix (T*T floats) is replaced by a reverse scan over T.
_MATRIX_MAX_T = 2048


def _stats_dtype(device: torch.device) -> torch.dtype:
    # Sums of squares lose precision in float32; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def masked_whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the valid elements of the whole batch; 0 at padding.

    ``reduce_fn`` (optional) sums a 1-D tensor across processes, e.g.
    ``lambda t: accelerator.reduce(t, "sum")``. It is called exactly once, on the stacked
    local (count, sum, sum of squares), so mean and variance are those of the global batch.
    The variance is unbiased (Bessel's correction; 0 when there is a single valid element).
    With ``shift_mean=False`` the mean is added back after scaling, (x - mean) / std + mean,
    as in the common PPO implementations: the scale is normalised, the sign of the mean kept.
    Statistics are accumulated in float64 (float32 on MPS).
    """
    mask = _as_bool(mask)
    sdt = _stats_dtype(x.device)
    xv = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).to(sdt)
    stats = torch.stack([mask.sum().to(sdt), xv.sum(), (xv * xv).sum()])
    if reduce_fn is not None:
        stats = reduce_fn(stats)
    count, total, total_sq = stats.unbind()
    if count <= 0:
        return torch.zeros_like(x)
    mean = total / count
    centered_sq = (total_sq - total * mean).clamp(min=0.0)
    var = centered_sq / (count - 1) if count > 1 else centered_sq * 0.0
    whitened = (x.to(sdt) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    whitened = whitened.to(x.dtype)
    return torch.where(mask, whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def _discounted_reverse_cumsum(x: Tensor, discount: float) -> Tensor:
    """y_t = sum_{k >= t} discount^(k - t) x_k along the last dim of a (B, T) tensor.

    For T <= _MATRIX_MAX_T this is one matmul with the upper-triangular discount matrix
    D[k, t] = discount^(k - t) (k >= t): exact up to float rounding, with no division by
    tiny powers (unlike scaling a plain cumsum by discount^-t, which overflows for long T).
    Longer sequences use a reverse scan over T to bound memory.
    """
    B, T = x.shape
    if T == 0:
        return x.clone()
    if T > _MATRIX_MAX_T:
        out = torch.empty_like(x)
        running = torch.zeros_like(x[:, 0])
        for t in range(T - 1, -1, -1):
            running = x[:, t] + discount * running
            out[:, t] = running
        return out
    idx = torch.arange(T, device=x.device)
    lag = idx.unsqueeze(1) - idx.unsqueeze(0)  # lag[k, t] = k - t
    base = torch.full((), float(discount), dtype=x.dtype, device=x.device)
    # lag >= 0 only; pow(0., 0) == 1 so discount == 0 reduces to the identity.
    matrix = torch.where(lag >= 0, torch.pow(base, lag.clamp(min=0).to(x.dtype)), 0.0)
    return x @ matrix


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016); returns (advantages, returns).

    delta_t = r_t + gamma V_{t+1} - V_t with V after the last valid token = 0 (terminal),
    A_t = sum_{k >= t} (gamma lam)^(k - t) delta_k, returns = A + V. Both are 0 at padding.
    ``values`` are the critic's values at the response positions (same alignment as rewards).
    """
    mask = _as_bool(mask)
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(mask, rewards.to(dtype), zero)
    v = torch.where(mask, values.to(dtype), zero)
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    delta = torch.where(mask, r + gamma * next_v - v, zero)
    adv = torch.where(mask, _discounted_reverse_cumsum(delta, gamma * lam), zero)
    returns = torch.where(mask, adv + v, zero)
    return adv, returns


def reinforce_pp_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Token returns-to-go G_t = sum_{k >= t} gamma^(k - t) r_k over valid tokens; 0 at padding."""
    mask = _as_bool(mask)
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(mask, rewards.to(dtype), zero)
    return torch.where(mask, _discounted_reverse_cumsum(r, gamma), zero)


def reinforce_pp_advantages(
    rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): returns-to-go whitened over the global batch.

    No critic: the batch normalisation plays the role of the baseline. Pass ``reduce_fn`` to
    normalise across processes (see ``masked_whiten``).
    """
    return masked_whiten(reinforce_pp_returns(rewards, mask, gamma), mask, reduce_fn=reduce_fn)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over valid tokens: 1 is a perfect critic, <= 0 is useless.

    Returns NaN when the returns have zero variance (the ratio is undefined).
    """
    mask = _as_bool(mask)
    values = values.detach().double()
    returns = returns.detach().double()
    var_r = masked_var(returns, mask)
    if var_r <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_r)
