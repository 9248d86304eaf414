"""Token log-probabilities, entropies and masked reductions.

Conventions used by every module in ``rto.algorithms``: tensors are batch-first ``(B, T)``;
``mask`` is a bool (or 0/1) tensor of the same shape marking the valid response tokens.
Invalid (padding) positions never contribute to a statistic, and values stored there are
ignored even if they are NaN or inf (we select with ``torch.where`` instead of multiplying).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "token_logprobs",
    "shifted_token_logprobs",
    "entropy_from_logits",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "sequence_logps",
    "token_logratio",
]

_FULL_PRECISION = (torch.float32, torch.float64)


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _rows_in_float(logits: Tensor):
    """Yield (slice, float logits) pieces: the whole tensor when it is already float32/64,
    one batch row at a time otherwise, so a bf16 (B, T, V) tensor is never copied whole to fp32."""
    if logits.dtype in _FULL_PRECISION or logits.shape[0] == 0:
        yield slice(None), logits if logits.dtype in _FULL_PRECISION else logits.float()
        return
    for b in range(logits.shape[0]):
        yield slice(b, b + 1), logits[b : b + 1].float()


def _excluded_index(excluded_ids: Sequence[int], logits: Tensor) -> Tensor | None:
    return (
        torch.as_tensor(list(excluded_ids), dtype=torch.long, device=logits.device) if excluded_ids else None
    )


def _logsumexp_kept(lg: Tensor, excluded: Tensor | None) -> Tensor:
    """logsumexp over the last dimension without the ``excluded`` entries, with no copy of ``lg``:
    lse_kept = lse + log(1 - p_excluded). Where the excluded mass exceeds 1/2 (log1p(-p) loses
    precision as p -> 1) it is recomputed exactly from a copy with those entries at -inf."""
    lse = torch.logsumexp(lg, dim=-1)
    if excluded is None:
        return lse
    p_excluded = torch.exp(torch.logsumexp(lg.index_select(-1, excluded), dim=-1) - lse)
    kept = lse + torch.log1p(-p_excluded.clamp(max=0.5))
    heavy = p_excluded > 0.5
    if bool(heavy.any()):
        exact = torch.logsumexp(lg.index_fill(-1, excluded, float("-inf")), dim=-1)
        kept = torch.where(heavy, exact, kept)
    return kept


def token_logprobs(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, excluded_ids: Sequence[int] = ()
) -> Tensor:
    """log p(label) under ``softmax(logits / temperature)``: (B, T, V), (B, T) -> (B, T) float.

    Computed as ``gathered logit - logsumexp(logits)`` in (at least) float32, which never
    materialises a full log-softmax. The same temperature used for sampling must be used
    here for the actor, reference and DPO models, otherwise the ratios are biased.

    ``excluded_ids``: tokens the sampler never draws (the pad token); the distribution is then
    renormalised over the other tokens, as the sampler's is. A label that is itself excluded gets a
    meaningless finite value; mask it out.

    Negative labels (e.g. the ``-100`` ignore index) get log-prob 0; mask them out.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    ignore = labels < 0
    safe_labels = labels.clamp(min=0).unsqueeze(-1)
    excluded = _excluded_index(excluded_ids, logits)
    pieces = []
    for rows, lg in _rows_in_float(logits):
        if temperature != 1.0:
            lg = lg / temperature
        picked = lg.gather(-1, safe_labels[rows]).squeeze(-1)
        pieces.append(picked - _logsumexp_kept(lg, excluded))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    return torch.where(ignore, torch.zeros((), dtype=out.dtype, device=out.device), out)


def shifted_token_logprobs(
    logits: Tensor, input_ids: Tensor, temperature: float = 1.0, excluded_ids: Sequence[int] = ()
) -> Tensor:
    """Causal-LM scoring of a sequence by itself: (B, T, V), (B, T) -> (B, T-1).

    Entry ``t`` is log p(input_ids[:, t+1] | input_ids[:, :t+1]), i.e. the logits at position t
    score token t+1. Slice the response positions out of the result afterwards.
    """
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature, excluded_ids)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, excluded_ids: Sequence[int] = ()) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position: (B, T, V) -> (B, T) float.

    Uses H = logsumexp(z) - sum_v softmax(z)_v * z_v, in float32 (row by row for low precision).
    With ``excluded_ids`` it is the entropy of the distribution renormalised without them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    excluded = _excluded_index(excluded_ids, logits)
    pieces = []
    for _, lg in _rows_in_float(logits):
        if temperature != 1.0:
            lg = lg / temperature
        if excluded is not None:
            lg = lg.index_fill(-1, excluded, float("-inf"))
        probs = torch.softmax(lg, dim=-1)
        weighted = torch.where(probs > 0, probs * lg, torch.zeros((), dtype=lg.dtype, device=lg.device))
        pieces.append(torch.logsumexp(lg, dim=-1) - weighted.sum(-1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over valid elements (over all elements when ``dim`` is None)."""
    mask = _as_bool(mask)
    xm = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid elements; 0 (not NaN) where there is no valid element."""
    mask = _as_bool(mask)
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid elements (scalar).

    With ``unbiased`` (Bessel's correction) and fewer than two valid elements the variance
    is undefined; we return 0 so that logging never produces NaN.
    """
    mask = _as_bool(mask)
    mean = masked_mean(x, mask)
    count = mask.sum()
    sq = masked_sum((x - mean) ** 2, mask)
    denom = count - 1 if unbiased else count
    if denom <= 0:
        return sq * 0.0
    return sq / denom.to(sq.dtype)


def sequence_logps(token_logps: Tensor, mask: Tensor) -> Tensor:
    """log p(y|x) of each sequence: sum of token log-probs over valid tokens, (B, T) -> (B,)."""
    return masked_sum(token_logps, mask, dim=-1)


def token_logratio(policy_token_logps: Tensor, ref_token_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token ``log pi(y_h) - log pi_ref(y_h)``, zero at invalid positions, (B, T) -> (B, T).

    With pi = pi_dpo this is the token-wise reward that RTO derives from DPO (times beta1):
    DPO's optimum makes beta * log(pi*/pi_ref) a valid per-token reward in the token MDP.
    """
    diff = policy_token_logps - ref_token_logps
    return torch.where(_as_bool(mask), diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
