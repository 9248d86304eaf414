"""The policy's full weights under their Hugging Face checkpoint names, for an engine that holds its own
copy of the model (vLLM).

Whatever wraps the policy is looked through: DDP and other accelerate wrappers are unwrapped, and a peft
LoRA model gives its base weights with the active adapters' deltas added (W + scale * B A, computed out of
place, so the trainer's base weights and the reference model they double as are never touched). Under FSDP2
each whole tensor is gathered from the processes' slices as it is reached (a LoRA policy is refused there). The
names are those `save_pretrained` writes, which is what inference engines load.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from rto.distributed import is_sharded
from rto.errors import RtoError


def unwrap(model):
    """The model inside DDP / accelerate wrappers (a peft model stays a peft model)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _lora_deltas(base) -> dict[str, torch.Tensor]:
    """{"<module>.weight": delta} for every LoRA layer, summed over its active adapters."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        active = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
        if module.merged:
            raise RuntimeError(f"{name}: LoRA adapters are merged into the base weights; unmerge them first")
        if active:
            deltas[name + ".weight"] = sum(module.get_delta_weight(a) for a in active)
    return deltas


@torch.no_grad()
def hf_weights(model, tied: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) for every parameter of the (unwrapped, LoRA-merged) causal LM.

    ``tied``: a parameter shared by several modules (GPT-2's input and output embeddings) is given under
    each of its names. An in-place reload needs every name (vLLM re-initialises each layer it reloads,
    the output layer included); a safetensors file takes each tensor once (``tied=False``). Tensors are
    detached; LoRA-merged ones are new tensors, the others share storage with the model."""
    model = unwrap(model)
    sharded = is_sharded(model)
    if not is_peft_model(model):
        for name, p in model.named_parameters(remove_duplicate=not tied):
            # FSDP2: each process holds a slice; gather the whole tensor (every process must iterate)
            yield name, (p.full_tensor() if sharded and hasattr(p, "full_tensor") else p).detach()
        return
    if sharded:
        raise RtoError(
            "exporting a LoRA policy's merged weights from FSDP2 slices is not supported; "
            "use --engine hf under FSDP2 with --lora, or train without --lora"
        )
    base = model.get_base_model()
    deltas = _lora_deltas(base)
    for name, p in base.named_parameters(remove_duplicate=not tied):
        if "lora_" in name:  # adapter matrices (lora_A, lora_B, lora_embedding_A/B, lora_magnitude_vector)
            continue
        if "modules_to_save." in name or "original_module." in name:
            raise RuntimeError(f"{name}: peft modules_to_save are not supported for engine weight export")
        clean = name.replace(".base_layer.", ".")
        delta = deltas.get(clean)
        yield clean, p.detach() if delta is None else p.detach() + delta.to(p.dtype)


def causal_lm_config(model):
    """A copy of the `PretrainedConfig` of the (unwrapped, possibly peft) causal LM, with ``architectures``
    naming the model's class (a config built in memory has none, and engines pick the model by it)."""
    model = unwrap(model)
    if is_peft_model(model):
        model = model.get_base_model()
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    return config
