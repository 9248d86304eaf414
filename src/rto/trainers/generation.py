"""Sampling responses for PPO with Hugging Face `generate` (KV cache, early stop when every row has
emitted EOS), made reproducible per sample.

Each sample carries its own seed. Sampling is Gumbel-max: greedy decoding over
logits/temperature (after top-p filtering) plus Gumbel noise that is a pure function of
(sample seed, step, token id), computed by an integer hash on the device. A sample's tokens therefore do
not depend on which process generated it or on what else was in its batch (up to float ties), and
no generator state needs saving for an exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as signed int64


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64-style finaliser on int64 tensors (wrapping arithmetic, logical shifts emulated)."""

    def lshr(v: torch.Tensor, s: int) -> torch.Tensor:
        return (v >> s) & ((1 << (64 - s)) - 1)

    x = x ^ lshr(x, 30)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9 as signed int64
    x = x ^ lshr(x, 27)
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ lshr(x, 31)


def sample_seeds(base_seed: int, iteration: int, global_index: torch.Tensor) -> torch.Tensor:
    """One int64 seed per sample from (run seed, iteration, the sample's index in the global batch)."""
    x = torch.as_tensor(global_index, dtype=torch.int64)
    key = _mix64(torch.tensor(base_seed & 0xFFFFFFFF, dtype=torch.int64) * _GOLDEN + iteration)
    return _mix64(_mix64(key) ^ (x * _GOLDEN))


def counter_uniform(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, V) uniforms in (0, 1), a pure function of (seed, step, token id)."""
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    step_key = _mix64(torch.tensor(step + 1, dtype=torch.int64, device=seeds.device))
    x = _mix64(seeds[:, None] ^ step_key) + ids[None, :] * _GOLDEN
    x = _mix64(x)
    mantissa = (x & ((1 << 53) - 1)).to(torch.float64)
    return (mantissa + 0.5) / float(1 << 53)


class GumbelNoise(LogitsProcessor):
    """Adds per-sample counter-based Gumbel noise; argmax of the result is a sample from softmax(logits)."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int):
        self.seeds = seeds
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        u = counter_uniform(self.seeds.to(scores.device), step, scores.shape[-1])
        gumbel = -torch.log(-torch.log(u))
        return (scores.double() + gumbel).to(scores.dtype)


class SuppressIds(LogitsProcessor):
    """Never sample these ids (the pad token: a sampled pad would be confused with padding)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __call__(self, input_ids, scores):
        scores[:, self.ids] = -float("inf")
        return scores


@dataclass
class Rollout:
    """Prompt (left-padded) and response (right-padded) token ids of one batch."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R), pad after EOS
    response_mask: torch.Tensor  # (B, R), 1 up to and including the first EOS
    ended: torch.Tensor  # (B,) bool: emitted EOS

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid = at or before the first EOS (the EOS action counts); all tokens if no EOS was emitted."""
    is_eos = response_ids == eos_id
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS count strictly before t
    mask = (before == 0).long()
    return mask, is_eos.any(dim=1)


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    seeds: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int,
    pad_id: int,
) -> Rollout:
    """Sample one response per (left-padded) prompt."""
    processors = [SuppressIds([pad_id])] if pad_id != eos_id else []
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(GumbelNoise(seeds, prompt_ids.shape[1]))
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        logits_processor=LogitsProcessorList(processors),
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    response = out[:, prompt_ids.shape[1] :]
    mask, ended = response_mask_from_ids(response, eos_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_id))
    return Rollout(prompt_ids, prompt_mask, response, mask, ended)
