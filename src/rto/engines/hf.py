"""The Hugging Face engine: `model.generate` on the live policy (KV cache, stops when every row has
emitted EOS), made reproducible per sample.

Sampling is Gumbel-max: greedy decoding over logits/temperature (after top-p filtering) plus Gumbel noise
that is a pure function of (sample seed, step, token id), computed by an integer hash on the device. A
sample's tokens therefore do not depend on which process generated it or on what else was in its batch (up
to float ties). Temperature 0 is plain greedy decoding. The engine samples from the model it is given (or
the model its getter returns at each call), so `sync_weights` has nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from rto.engines.base import GOLDEN, Rollout, SamplingSettings, mix64, response_mask_from_ids


def counter_uniform(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, V) uniforms in (0, 1), a pure function of (seed, step, token id)."""
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    step_key = mix64(torch.tensor(step + 1, dtype=torch.int64, device=seeds.device))
    x = mix64(seeds[:, None] ^ step_key) + ids[None, :] * GOLDEN
    x = mix64(x)
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


@torch.no_grad()
def generate(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seeds: torch.Tensor, s: SamplingSettings
):
    """Sample one response per (left-padded) prompt with ``model.generate``."""
    processors = [SuppressIds([s.pad_id])] if s.pad_id != s.eos_id else []
    if s.temperature > 0:
        if s.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(s.temperature))
        if s.top_p < 1.0:
            processors.append(TopPLogitsWarper(s.top_p))
        processors.append(GumbelNoise(seeds, prompt_ids.shape[1]))
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=s.max_new_tokens,
        logits_processor=LogitsProcessorList(processors),
        eos_token_id=s.eos_id,
        pad_token_id=s.pad_id,
        use_cache=True,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    response = out[:, prompt_ids.shape[1] :]
    mask, ended = response_mask_from_ids(response, s.eos_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, s.pad_id))
    return Rollout(prompt_ids, prompt_mask, response, mask, ended)


class HFEngine:
    """Samples with Hugging Face ``generate`` from the live policy.

    ``model`` is the model, or a zero-argument function returning it at each call (a trainer's model may
    be re-wrapped); wrappers (DDP, accelerate) are taken off. The model is put in eval mode and the
    prompts and seeds are moved to its device; the rollout comes back on that device."""

    def __init__(self, model: torch.nn.Module | Callable[[], torch.nn.Module], settings: SamplingSettings):
        self._get = (lambda: model) if isinstance(model, torch.nn.Module) else model
        self.settings = settings

    def model(self) -> torch.nn.Module:
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(self._get())

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seeds: torch.Tensor) -> Rollout:
        model = self.model()
        model.eval()
        device = next(model.parameters()).device
        return generate(model, prompt_ids.to(device), prompt_mask.to(device), seeds.to(device), self.settings)

    def sync_weights(self, policy) -> None:
        """Nothing to do: generation runs on the live policy."""

    def close(self) -> None:
        """Nothing to release."""
