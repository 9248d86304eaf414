"""The Hugging Face engine: `model.generate` on the live policy (KV cache, stops when every row has
emitted EOS), made reproducible per sample.

Sampling is Gumbel-max: greedy decoding over logits/temperature (after top-p filtering) plus Gumbel noise
that is a pure function of (sample seed, step, token id), computed by an integer hash on the device. A
sample's tokens therefore do not depend on which process generated it or on what else was in its batch (up
to float ties). Temperature 0 is plain greedy decoding. The engine samples from the model it is given (or
the model its getter returns at each call), so `sync_weights` has nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

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


def generation_config(s: SamplingSettings) -> GenerationConfig:
    """rto's own settings for ``generate``: greedy decoding (the Gumbel noise makes it a sample) with no
    penalty, constraint or length rule, so that every logit change comes from rto's processors."""
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=s.eos_id,
        pad_token_id=s.pad_id,
        use_cache=True,
    )


@contextmanager
def checkpoint_generation_config_set_aside(model: torch.nn.Module) -> Iterator[None]:
    """``generate`` fills every setting its config leaves unset from the model's own ``generation_config``,
    which a checkpoint ships (instruct models: repetition_penalty, no_repeat_ngram_size, min_new_tokens,
    bad_words_ids, suppress_tokens, ...): each would change the sampled distribution away from the one
    the trainer scores. A blank one stands in during the call; the model's own is put back after."""
    saved = [
        (m, m.generation_config)
        for m in model.modules()
        if isinstance(m, GenerationMixin) and getattr(m, "generation_config", None) is not None
    ]
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in saved:
            m.generation_config = config


def weights_are_sharded(model) -> bool:
    """Whether each process holds only a slice of the model's weights (FSDP2). Then every forward is a
    collective, so a process whose rows have all ended must keep stepping (its output is unchanged)
    until every process's rows have ended: Hugging Face generate's synced_gpus."""
    from rto.distributed import is_sharded

    return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1 and is_sharded(model)


@torch.no_grad()
def generate(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seeds: torch.Tensor, s: SamplingSettings
):
    """Sample one response per (left-padded) prompt with ``model.generate``: from exactly
    softmax(logits / T) (after top-p when below 1, without the pad token), whatever the checkpoint's own
    generation config says."""
    processors = [SuppressIds(list(s.excluded_ids))] if s.excluded_ids else []
    if s.temperature > 0:
        if s.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(s.temperature))
        if s.top_p < 1.0:
            processors.append(TopPLogitsWarper(s.top_p))
        processors.append(GumbelNoise(seeds, prompt_ids.shape[1]))
    with checkpoint_generation_config_set_aside(model):
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=generation_config(s),
            logits_processor=LogitsProcessorList(processors),
            synced_gpus=weights_are_sharded(model),
        )
    response = out[:, prompt_ids.shape[1] :]
    mask, ended = response_mask_from_ids(response, s.eos_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, s.pad_id))
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response, response_mask=mask, ended=ended
    )


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
