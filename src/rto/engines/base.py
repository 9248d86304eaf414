"""What every rollout engine shares: the `Rollout` it returns, the `SamplingSettings` it samples with,
the `RolloutEngine` protocol, and the per-sample seeds.

An engine turns a batch of left-padded prompts into one sampled response per prompt. Each sample carries
its own int64 seed, a pure function of (run seed, iteration, the sample's index in the global batch)
(`sample_seeds`), so a sample's tokens do not depend on which process generated it or on what else was in
its batch, and no generator state needs saving for an exact resume. How an engine turns the seed into
random numbers is its own business (the Hugging Face engine: counter-based Gumbel noise, `engines/hf.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as signed int64


@dataclass
class Rollout:
    """Prompt (left-padded) and response (right-padded) token ids of one batch."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R), pad after EOS
    response_mask: torch.Tensor  # (B, R), 1 up to and including the first EOS
    ended: torch.Tensor  # (B,) bool: emitted EOS
    engine_logps: torch.Tensor | None = None  # (B, R): the engine's own log-probs of the sampled tokens

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (the same for every batch an engine generates)."""

    max_new_tokens: int
    """Longest response in tokens (EOS included)."""
    temperature: float
    """Logits are divided by this before sampling; 0 means greedy decoding."""
    top_p: float
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches this."""
    eos_id: int
    """The token that ends a response (the first one counts; what follows is padding)."""
    pad_id: int
    """Padding id of prompts and responses; never sampled when it differs from eos_id."""

    @property
    def excluded_ids(self) -> tuple[int, ...]:
        """The tokens never sampled: `never_sampled`."""
        return never_sampled(self.eos_id, self.pad_id)


def never_sampled(eos_id: int, pad_id: int) -> tuple[int, ...]:
    """The tokens no engine samples: the pad token, unless it is EOS (a sampled pad would read as padding).
    Every scoring pass renormalises over the other tokens too (``excluded_ids`` of rto.scoring and
    rto.algorithms.logprobs), so that the trainer scores exactly the distribution the engine samples from."""
    return (pad_id,) if pad_id != eos_id else ()


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples responses for the trainers, `rto eval` and `rto label`.

    ``generate`` takes left-padded prompts and one seed per row (on any device) and returns a `Rollout` on
    the device of the policy it samples for, ready to be scored there. ``sync_weights`` makes the engine sample from the policy's current weights: a no-op for an
    engine that samples from the live model, a weight copy for one that holds its own. ``close`` releases
    what the engine holds (processes, device memory)."""

    settings: SamplingSettings

    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seeds: torch.Tensor
    ) -> Rollout: ...

    def sync_weights(self, policy) -> None: ...

    def close(self) -> None: ...


def generate_for_prompts(engine: RolloutEngine, prompts: list[list[int]], seeds: torch.Tensor) -> Rollout:
    """Sample for prompts given as token-id lists: left-padded into one batch, then `engine.generate`."""
    from rto.data.collate import pad_sequences

    ids = pad_sequences(prompts, engine.settings.pad_id, side="left")
    mask = pad_sequences([[1] * len(p) for p in prompts], 0, side="left")
    return engine.generate(ids, mask, seeds)


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid = at or before the first EOS (the EOS action counts); all tokens if no EOS was emitted."""
    is_eos = response_ids == eos_id
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS count strictly before t
    mask = (before == 0).long()
    return mask, is_eos.any(dim=1)


def mix64(x: torch.Tensor) -> torch.Tensor:
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
    key = mix64(torch.tensor(base_seed & 0xFFFFFFFF, dtype=torch.int64) * GOLDEN + iteration)
    return mix64(mix64(key) ^ (x * GOLDEN))
