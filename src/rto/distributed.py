"""Everything that depends on how many processes run and how the work is laid out over them.

- which layouts (single process, DDP, DeepSpeed ZeRO-2/3, FSDP) each stage supports: `LAYOUTS`;
- the accelerator, and the preparation of trained models (wrapped or sharded by accelerate, noted for
  checkpoints with their schedulers) and of frozen ones (reference, DPO and reward models);
- gradient accumulation across processes, the global gradient norm, sums over processes;
- work split so that every process runs the same number of forwards;
- the full state dict of a model whose weights are sharded, for saving, and its whole weights one
  tensor at a time, for an inference engine's weight sync;
- the sharded part of checkpoints (FSDP2);
- the clean shutdown of the process group.

rto has no distributed layer of its own. Processes, devices, DDP and DeepSpeed go through accelerate's
public API. FSDP2 is PyTorch's `torch.distributed.fsdp.fully_shard`, applied here directly (each
transformer block, then the model): accelerate's FSDP2 preparation takes one model per `prepare` call and
does not engage on CPU processes, while PPO shards five models and rto tests the very same code on CPU
processes (gloo). Its settings come from accelerate's FSDP plugin, i.e. from an accelerate config file
(configs/accelerate/fsdp2.yaml) or the FSDP_* environment `accelerate launch` sets from it. Sharded
checkpoints are torch.distributed.checkpoint in safetensors files (one per process), read back without
unpickling anything.

One module on purpose (about 600 lines): every place where the layout changes what rto does is here, so
a layout is added or changed in one file (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from rto.errors import RtoError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """What rto supports when a run is laid out over processes in one way. The supervised stages
    (sft, rm, dpo) run under every layout; the reasons below are the errors PPO stops with."""

    name: str
    shards_weights: bool
    """Each process holds a slice of every trained model's weights (saving gathers them first)."""
    ppo: str = ""
    """Why PPO cannot run under this layout ("" = it can)."""
    ppo_critic: str = ""
    """Why PPO with a critic (advantage 'gae') cannot ("" = it can)."""
    frozen_models: str = "a full copy on every process"
    """Where the frozen models (reference, DPO model, reward model) live: see prepare_frozen."""
    tested: str = "not tested (no GPU here)"
    """Where this layout is exercised."""


_FSDP2_LAUNCH = "accelerate launch --config_file configs/accelerate/fsdp2.yaml"
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("single", shards_weights=False, tested="every test"),
        Layout("ddp", shards_weights=False, tested="tests/distributed (2 CPU processes, gloo)"),
        Layout(
            "deepspeed-zero2",
            shards_weights=False,
            ppo_critic="rto ppo with a critic (advantage 'gae') cannot run under DeepSpeed: accelerate drives "
            f"one engine per Accelerator; use FSDP2 ({_FSDP2_LAUNCH}) or DDP, or a critic-free --advantage "
            "(reinforce++, grpo, rloo, reinforce++-baseline, dr-grpo)",
        ),
        Layout(
            "deepspeed-zero3",
            shards_weights=True,
            ppo="rto ppo does not run under DeepSpeed ZeRO-3: accelerate drives one DeepSpeed engine per "
            "trained model, so policy and critic cannot both be trained, and the frozen reference, DPO and "
            "reward models would stay whole on every process. FSDP2 shards all five models and samples "
            f"from the sharded policy: {_FSDP2_LAUNCH}",
        ),
        Layout(
            "fsdp1",
            shards_weights=True,
            ppo=f"rto ppo does not run under FSDP version 1; set fsdp_version: 2 ({_FSDP2_LAUNCH})",
        ),
        Layout(
            "fsdp2",
            shards_weights=True,
            frozen_models="sharded like the trained ones; --offload-frozen-models keeps their shards in CPU memory",
            tested="tests/distributed/test_dist_fsdp2.py (2 CPU processes, gloo)",
        ),
    )
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def layout_of(acc: Accelerator) -> Layout:
    """The layout accelerate set up for this run (from its launch configuration). FSDP on CPU processes:
    accelerate keeps them MULTI_CPU and ignores the FSDP environment its launcher set from an FSDP config
    file (ACCELERATE_USE_FSDP, FSDP_VERSION); rto reads that environment itself."""
    kind = acc.distributed_type
    if kind == DistributedType.NO:
        return LAYOUTS["single"]
    if kind == DistributedType.MULTI_CPU and _env_true("ACCELERATE_USE_FSDP"):
        return LAYOUTS["fsdp2" if os.environ.get("FSDP_VERSION", "1").strip() == "2" else "fsdp1"]
    if kind == DistributedType.DEEPSPEED:
        stage = getattr(getattr(acc.state, "deepspeed_plugin", None), "zero_stage", None)
        return LAYOUTS["deepspeed-zero3" if stage == 3 else "deepspeed-zero2"]
    if kind == DistributedType.FSDP:
        version = getattr(getattr(acc.state, "fsdp_plugin", None), "fsdp_version", 1)
        return LAYOUTS["fsdp2" if version == 2 else "fsdp1"]
    if str(kind.value).startswith("MULTI_"):
        return LAYOUTS["ddp"]
    raise RtoError(f"rto does not support accelerate's {kind.value} layout; use DDP, DeepSpeed or FSDP")


def require_support(acc: Accelerator, stage: str, with_critic: bool = False) -> Layout:
    """Fail at start-up, with the reason from LAYOUTS, when `stage` cannot run under this layout."""
    layout = layout_of(acc)
    if stage == "ppo":
        reason = layout.ppo or (layout.ppo_critic if with_critic else "")
        if reason:
            raise RtoError(reason)
    return layout


# ----------------------------------------------------------------------------- setup


def make_accelerator(cfg) -> Accelerator:
    """One Accelerator per run; single process unless launched by accelerate/torchrun.

    On a machine without an accelerator device we must say cpu=True: otherwise accelerate, launched by
    torchrun, reports a single process (DistributedType.NO) in every rank, and each rank trains alone."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    if getattr(cfg, "deterministic", False):
        use_deterministic_kernels()
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=log_with,
        project_dir=cfg.output_dir,
        cpu=_no_accelerator_device(),
    )
    set_seed(cfg.seed)
    return acc


def use_deterministic_kernels() -> None:
    """GPU kernels that give the same bits on every run (see docs/reliability.md): cuBLAS with a fixed
    workspace (must be set before cuBLAS starts), no cuDNN autotuning, and deterministic variants of ops
    that otherwise use atomics. Ops without a deterministic variant warn instead of failing a long run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _no_accelerator_device() -> bool:
    current = getattr(torch, "accelerator", None)
    if current is not None and hasattr(current, "current_accelerator"):
        return current.current_accelerator() is None
    return not torch.cuda.is_available()


@dataclass
class _Prepared:
    models: list = field(default_factory=list)
    schedulers: list = field(default_factory=list)
    optimizers: list = field(default_factory=list)  # FSDP2: each trained model's optimizer, in order


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_trained(acc: Accelerator, *models_and_optimizers, schedulers=()):
    """`acc.prepare` for the models being trained and their optimizers (DDP-wrapped, sharded under FSDP
    and ZeRO-3, or turned into a DeepSpeed engine), returning them in the same order. The prepared models
    and the `schedulers` are noted for checkpoints: save_checkpoint refuses non-finite weights of these
    models and stores the schedulers' states as JSON (accelerate's register_for_checkpointing would
    pickle them).

    FSDP2: each model is sharded (`fully_shard`, see _shard) and its optimizer (the one holding its
    parameters) is pointed at the shards, so parameters, gradients and optimizer states are all sharded;
    accelerate does not see these models. The optimizers must not have stepped yet."""
    noted = _PREPARED.setdefault(acc, _Prepared())
    noted.schedulers += list(schedulers)
    if layout_of(acc).name == "fsdp2":
        prepared = _prepare_fsdp2(acc, models_and_optimizers, noted)
        return prepared if len(prepared) > 1 else prepared[0]
    prepared = acc.prepare(*models_and_optimizers)
    as_tuple = prepared if isinstance(prepared, tuple) else (prepared,)
    noted.models += [p for p in as_tuple if isinstance(p, torch.nn.Module)]
    return prepared


def trained_models(acc: Accelerator) -> list:
    """The models prepared with prepare_trained for this accelerator."""
    return list(_PREPARED.get(acc, _Prepared()).models)


def checkpointed_schedulers(acc: Accelerator) -> list:
    """The schedulers given to prepare_trained for this accelerator, in order."""
    return list(_PREPARED.get(acc, _Prepared()).schedulers)


def prepare_frozen(acc: Accelerator, model, offload: bool = False):
    """Place a frozen model (reference, DPO model, reward model; no optimizer) for inference.

    FSDP2: sharded like the trained models; with `offload` its shards stay in CPU memory and each block
    is copied to the device only while it runs (less device memory, a host-to-device copy per use).
    Every other layout keeps a full copy on every process's device (LAYOUTS.frozen_models says so)."""
    if model is None:
        return None
    if layout_of(acc).name == "fsdp2":
        return _shard(acc, model, offload=offload)
    return model.to(acc.device)


def gradient_free(model):
    """The context for forwards of `model` without gradients: torch.inference_mode, except when its
    weights are sharded (FSDP2), then torch.no_grad. FSDP2 reuses the buffers it gathers weights into, and
    a buffer created under inference mode cannot be written outside it: the next training forward would
    fail."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def is_sharded(model) -> bool:
    """Whether FSDP2 shards the model (or a module inside it, as for a peft model). Read from the modules,
    not the parameters: while a unit's weights are gathered its parameters are ordinary tensors."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


# ----------------------------------------------------------------------------- the training step


@contextlib.contextmanager
def accumulation_step(acc: Accelerator, model, last: bool):
    """One micro-step of gradient accumulation. Non-final ones skip the gradient all-reduce (DDP, FSDP)
    and, under DeepSpeed, the engine step: accelerate steps a DeepSpeed engine inside every `backward`
    while `acc.sync_gradients` is set, so it is cleared until the last micro-step.

    Under FSDP2 every micro-step reduce-scatters its gradients into the sharded ones: skipping that would
    hold whole, unsharded gradients of the model on every process until the last micro-step."""
    if last or layout_of(acc).name == "fsdp2":
        yield
        return
    acc.sync_gradients = False
    try:
        with acc.no_sync(model):
            yield
    finally:
        acc.sync_gradients = True


def clip_grad_norm(acc: Accelerator, model, max_norm: float) -> float:
    """Clip the gradient norm of the model's trainable parameters to `max_norm` (0: no clipping) and
    return the global norm before clipping: the norm of the whole gradient, not of this process's slice
    of it, under every layout (accelerate gathers the norms of sharded gradients).

    Under DeepSpeed the engine has already clipped (its config's gradient_clipping) and stepped inside
    the last `backward`; accelerate only reads its norm back (None when the engine has none: NaN here)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if layout_of(acc).name == "fsdp2":  # sharded gradients: torch computes the global norm and clips
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        norm = acc.clip_grad_norm_(params, max_norm)
        return float("nan") if norm is None else float(norm)
    # An infinite max_norm makes accelerate compute the norm without clipping.
    norm = acc.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
    return float(norm)


def global_sum(acc: Accelerator, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum float statistics over all processes (identity on one process)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.cpu()


def even_micro_batches(acc: Accelerator, items: list, size: int) -> list[tuple[list, bool]]:
    """This process's share of `items` (every num_processes-th item) in micro-batches of `size`, as
    (batch, real) pairs, padded with stand-in batches (real=False: run the forward, drop the result) so
    that every process runs the same number of forwards. Under sharded weights every forward is a
    collective, and a DDP model with buffers broadcasts them in every forward: a process with one
    batch fewer would leave the others waiting forever."""
    if not items:
        return []
    local = items[acc.process_index :: acc.num_processes]
    batches = [(local[i : i + size], True) for i in range(0, len(local), size)]
    largest_share = math.ceil(len(items) / acc.num_processes)
    return batches + [(items[:1], False)] * (math.ceil(largest_share / size) - len(batches))


def full_state_dict(acc: Accelerator, model) -> dict | None:
    """The whole state dict of a prepared model whose weights are sharded over processes (ZeRO-3, FSDP),
    gathered by accelerate (FSDP2: by torch); every process must call this (a collective). None under layouts where
    each process holds whole weights: save from the model itself. Under FSDP1 and FSDP2 only the main
    process receives the weights (in CPU memory; the others get an empty dict). FSDP2 leaves out the second
    name of tied weights (input embeddings = output layer), as save_pretrained does for a whole model."""
    if not layout_of(acc).shards_weights:
        return None
    if layout_of(acc).name != "fsdp2":
        return acc.get_state_dict(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for name in tied_names(model):
        full.pop(name, None)
    return full


# ----------------------------------------------------------------------------- FSDP2

SHARDED_DIR = "sharded"  # in a checkpoint folder: the trained models' and optimizers' shards
SHARDED_META = "sharded_meta.json"  # optimizer settings (lr, betas, ...) and which optimizers had state


def _fsdp2_plugin(acc: Accelerator):
    plugin = getattr(acc.state, "fsdp_plugin", None)
    if plugin is None:  # CPU processes: accelerate ignored the FSDP environment; read it the same way
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
    return plugin


def _fully_shard_kwargs(acc: Accelerator, offload: bool) -> dict:
    """fully_shard's settings: reshard_after_forward and CPU offload from accelerate's FSDP plugin (the
    config file's fsdp_reshard_after_forward, fsdp_offload_params), mixed precision from --mixed-precision
    (bf16: bf16 compute, fp32 sharded weights, gradients reduced in fp32)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    plugin = _fsdp2_plugin(acc)
    offload = offload or isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    if acc.mixed_precision == "fp16":
        raise RtoError(
            "field 'mixed_precision': fp16 is not supported under FSDP2 (it needs a sharded gradient "
            "scaler); use bf16"
        )
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if acc.mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    reshard = plugin.reshard_after_forward
    return {
        "reshard_after_forward": reshard if isinstance(reshard, bool) else True,
        "mp_policy": mp,
        "offload_policy": CPUOffloadPolicy(pin_memory=acc.device.type == "cuda")
        if offload
        else OffloadPolicy(),
    }


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the classes Hugging Face marks as not to be split across devices
    (`_no_split_modules`), which is also how accelerate picks FSDP units."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _shard(acc: Accelerator, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
    """fully_shard each transformer block, then the model (embeddings, final norm, heads): a block's whole
    weights exist only while it runs. fully_shard moves the shards to the device (or keeps them in CPU
    memory under offload). In place; returns the model.

    - A peft model is sharded at its Hugging Face model, not at peft's wrapper (which holds no weights of
      its own): peft's generate calls that model directly, skipping the wrapper's forward and with it
      the hook that gathers the outer unit's weights.
    - A trained model's outer unit keeps its weights gathered from forward to backward: a critic's loss
      is read from its head's per-token output (models.token_scores), not from what the forward
      returns, so the hook that would gather them again before backward never runs."""
    from torch.distributed.fsdp import fully_shard

    kwargs = _fully_shard_kwargs(acc, offload)
    blocks = _blocks(model)
    if not blocks:
        log.warning(
            "%s: no transformer blocks found (_no_split_modules); sharding it as one unit, so every "
            "forward gathers all of its weights at once",
            type(model).__name__,
        )
    for block in blocks:
        fully_shard(block, **kwargs)
    trained = any(p.requires_grad for p in model.parameters())
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    fully_shard(root, **{**kwargs, "reshard_after_forward": kwargs["reshard_after_forward"] and not trained})
    return model


def _prepare_fsdp2(acc: Accelerator, objects: tuple, noted: _Prepared) -> tuple:
    """prepare_trained under FSDP2: shard each model, then point its optimizer's parameter groups at the
    sharded parameters (fully_shard replaces every parameter by a sharded one of the same name)."""
    optimizers = [o for o in objects if isinstance(o, torch.optim.Optimizer)]
    out = []
    for obj in objects:
        if not isinstance(obj, torch.nn.Module):
            out.append(obj)
            continue
        name_of = {id(p): n for n, p in obj.named_parameters()}
        mine = [o for o in optimizers if any(id(p) in name_of for g in o.param_groups for p in g["params"])]
        if len(mine) != 1:
            raise RtoError(
                f"{type(obj).__name__}: FSDP2 needs exactly one optimizer per trained model, got {len(mine)}"
            )
        optimizer = mine[0]
        if optimizer.state:
            raise RtoError("FSDP2: an optimizer must be prepared before its first step")
        _shard(acc, obj)
        sharded = dict(obj.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[name_of[id(p)]] for p in group["params"]]
        noted.models.append(obj)
        noted.optimizers.append(optimizer)
        out.append(obj)
    return tuple(out)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def iter_full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) for every entry of the model's state dict, one tensor at a time, on every
    process: what an inference engine's weight sync reads. Sharded tensors are all-gathered as they are
    reached, so every process must iterate to the end in step; peak extra memory is one whole tensor.
    Names are the model's own (a peft model's carry peft's prefixes and unmerged LoRA factors)."""
    for name, t in model.state_dict().items():
        yield name, (t.full_tensor() if hasattr(t, "full_tensor") else t)


def tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that are the same tensor as a parameter named earlier (tied weights)."""
    first: set[int] = set()
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.add(name)
        first.add(id(p))
    return tied


def _flat_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, with_optimizer: bool
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """A model's and (if it has state) its optimizer's sharded state as flat dicts: tensors, and the
    optimizer's plain values (lr, betas, ...). An optimizer that never stepped is left out: reading its
    state would initialise it with a zero step, which changes Adam's bias correction afterwards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    tensors = {f"model/{k}": v for k, v in get_model_state_dict(model, options=opts).items()}
    plain: dict[str, object] = {}
    if with_optimizer:
        for k, v in get_optimizer_state_dict(model, optimizer, options=opts).items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{k}"] = v
            else:
                plain[k] = v
    return tensors, plain


def _without_aliases(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop entries that share storage with an earlier one (tied embeddings): safetensors refuses to
    write shared tensors. Returns the kept entries and {dropped name: kept name}."""
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in tensors.items():
        loc = local_tensor(v)
        key = (loc.untyped_storage().data_ptr(), loc.storage_offset(), tuple(loc.shape), loc.dtype)
        if loc.numel() and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            kept[k] = v
    return kept, aliases


def _sharded_trained(acc: Accelerator) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """FSDP2's trained models with their optimizers, named model_0, model_1, ... in preparation order."""
    noted = _PREPARED.get(acc)
    if noted is None or not noted.optimizers:
        return {}
    return {f"model_{i}": pair for i, pair in enumerate(zip(noted.models, noted.optimizers))}


def save_sharded_state(acc: Accelerator, folder: str | Path) -> None:
    """Write the trained sharded models and their optimizers into `folder`/sharded: every process writes
    its own safetensors file (torch.distributed.checkpoint), the main process a JSON file with the
    optimizers' plain settings. A collective; nothing to do when nothing is sharded."""
    trained = _sharded_trained(acc)
    if not trained:
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, (model, optimizer) in trained.items():
        stepped = bool(optimizer.state)
        t, plain = _flat_state(model, optimizer, stepped)
        tensors.update({f"{name}/{k}": v for k, v in t.items()})
        meta[name] = {"optimizer_has_state": stepped, "optimizer_settings": plain}
    tensors, _ = _without_aliases(tensors)
    out = Path(folder) / SHARDED_DIR
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(out), save_distributed=True))
    if acc.is_main_process:
        (out / SHARDED_META).write_text(json.dumps(meta, indent=1))
    acc.wait_for_everyone()


def load_sharded_state(acc: Accelerator, folder: str | Path) -> None:
    """Restore what save_sharded_state wrote into this run's sharded models and optimizers (read from
    safetensors and JSON: nothing is unpickled). A collective."""
    trained = _sharded_trained(acc)
    if not trained:
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    src = Path(folder) / SHARDED_DIR
    if not (src / SHARDED_META).is_file():
        raise RtoError(
            f"{folder}: holds no sharded state ({SHARDED_DIR}/{SHARDED_META}); it was not written by a run "
            "under FSDP2. Resume it with the layout that wrote it"
        )
    meta = json.loads((src / SHARDED_META).read_text())
    if set(meta) != set(trained):
        raise RtoError(
            f"{folder}: holds the sharded models {sorted(meta)}, this run trains {sorted(trained)}"
        )
    targets: dict[str, torch.Tensor] = {}
    parts = {}
    for name, (model, optimizer) in trained.items():
        stepped = meta[name]["optimizer_has_state"]
        t, plain = _flat_state(model, optimizer, stepped)
        parts[name] = (t, plain)
        targets.update({f"{name}/{k}": v for k, v in t.items()})
    kept, aliases = _without_aliases(targets)
    dcp.load(kept, storage_reader=HuggingFaceStorageReader(str(src)))
    for dropped, source in aliases.items():
        local_tensor(targets[dropped]).copy_(local_tensor(kept[source]))
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    for name, (model, optimizer) in trained.items():
        t, plain = parts[name]
        msd = {k[len("model/") :]: v for k, v in t.items() if k.startswith("model/")}
        if not meta[name]["optimizer_has_state"]:
            set_model_state_dict(model, msd, options=opts)
            continue
        saved = meta[name]["optimizer_settings"]
        osd = {k[len("optim/") :]: v for k, v in t.items() if k.startswith("optim/")}
        for k, current in plain.items():  # JSON turns tuples (betas) into lists
            value = saved.get(k, current)
            osd[k] = tuple(value) if isinstance(current, tuple) else value
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=opts)


def local_state_bytes(models: list, optimizers: list) -> dict[str, int]:
    """Bytes this process holds of the models' weights (and buffers), of the gradients of the trained
    weights (one per trainable parameter: the size they take while they exist) and of the optimizer
    states. What sharding divides; activations and the gathered blocks of a running forward are not
    counted."""
    weights = grads = states = 0
    for m in models:
        if m is None:
            continue
        for p in m.parameters():
            n = local_tensor(p).numel() * p.element_size()
            weights += n
            grads += n if p.requires_grad else 0
        weights += sum(local_tensor(b).numel() * b.element_size() for b in m.buffers())
    for opt in optimizers:
        if opt is None:
            continue
        for st in opt.state.values():
            states += sum(
                local_tensor(v).numel() * v.element_size() for v in st.values() if torch.is_tensor(v)
            )
    return {"weights": weights, "grads": grads, "optimizer": states, "total": weights + grads + states}


# ----------------------------------------------------------------------------- the end


def finish(acc: Accelerator) -> None:
    """Clean shutdown: trackers, then the process group (avoids aborts at exit).

    The pause before destroying a gloo group lets its worker threads release the collectives that just
    finished: releasing one can need the GIL, and the group's destructor holds the GIL while it joins
    those threads, so destroying too early deadlocked a 2-process run here (a rank hung at exit)."""
    acc.wait_for_everyone()
    if acc.num_processes > 1 and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "gloo":
            time.sleep(0.2)  # sleeping releases the GIL
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
