"""Everything that depends on how many processes run and how the work is laid out over them.

- which layouts (single process, DDP, DeepSpeed ZeRO-2/3, FSDP) each stage supports: `LAYOUTS`;
- the accelerator, and the preparation of trained models (wrapped or sharded by accelerate, noted for
  checkpoints with their schedulers) and of frozen ones (reference, DPO and reward models);
- gradient accumulation across processes, the global gradient norm, sums over processes;
- work split so that every process runs the same number of forwards;
- the full state dict of a model whose weights are sharded, for saving;
- the clean shutdown of the process group.

rto has no distributed layer of its own: all of this goes through accelerate's public API.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import weakref
from dataclasses import dataclass, field

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


_WHOLE_WEIGHTS = "sampling needs whole weights"
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("single", shards_weights=False, tested="every test"),
        Layout("ddp", shards_weights=False, tested="tests/distributed (2 CPU processes, gloo)"),
        Layout(
            "deepspeed-zero2",
            shards_weights=False,
            ppo_critic="rto ppo with a critic (advantage 'gae') cannot run under DeepSpeed: accelerate drives "
            "one engine per Accelerator; use DDP, or --advantage reinforce++ (no critic)",
        ),
        Layout(
            "deepspeed-zero3",
            shards_weights=True,
            ppo=f"rto ppo does not support DeepSpeed ZeRO-3 yet ({_WHOLE_WEIGHTS}); use DDP",
        ),
        Layout(
            "fsdp1", shards_weights=True, ppo=f"rto ppo does not support FSDP yet ({_WHOLE_WEIGHTS}); use DDP"
        ),
        Layout(
            "fsdp2",
            shards_weights=True,
            ppo=f"rto ppo does not support FSDP yet ({_WHOLE_WEIGHTS}); use DDP",
            tested="score statistics and gradient norm on hand-sharded CPU processes "
            "(tests/distributed/test_dist_layouts.py); the stages are not tested (no GPU here)",
        ),
    )
}


def layout_of(acc: Accelerator) -> Layout:
    """The layout accelerate set up for this run (from its launch configuration)."""
    kind = acc.distributed_type
    if kind == DistributedType.NO:
        return LAYOUTS["single"]
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


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_trained(acc: Accelerator, *models_and_optimizers, schedulers=()):
    """`acc.prepare` for the models being trained and their optimizers (DDP-wrapped, sharded under FSDP
    and ZeRO-3, or turned into a DeepSpeed engine), returning them in the same order. The prepared models
    and the `schedulers` are noted for checkpoints: save_checkpoint refuses non-finite weights of these
    models and stores the schedulers' states as JSON (accelerate's register_for_checkpointing would
    pickle them)."""
    prepared = acc.prepare(*models_and_optimizers)
    as_tuple = prepared if isinstance(prepared, tuple) else (prepared,)
    noted = _PREPARED.setdefault(acc, _Prepared())
    noted.models += [p for p in as_tuple if isinstance(p, torch.nn.Module)]
    noted.schedulers += list(schedulers)
    return prepared


def trained_models(acc: Accelerator) -> list:
    """The models prepared with prepare_trained for this accelerator."""
    return list(_PREPARED.get(acc, _Prepared()).models)


def checkpointed_schedulers(acc: Accelerator) -> list:
    """The schedulers given to prepare_trained for this accelerator, in order."""
    return list(_PREPARED.get(acc, _Prepared()).schedulers)


def prepare_frozen(acc: Accelerator, model):
    """Place a frozen model (reference, DPO model, reward model; no optimizer) for inference.

    Today every layout keeps a full copy on every process's device, which is right for single-process
    and DDP runs. Under ZeRO-3 and FSDP that copy costs the memory sharding saves: sharding frozen
    models there is not wired yet (LAYOUTS.frozen_models says so)."""
    if model is None:
        return None
    return model.to(acc.device)


# ----------------------------------------------------------------------------- the training step


@contextlib.contextmanager
def accumulation_step(acc: Accelerator, model, last: bool):
    """One micro-step of gradient accumulation. Non-final ones skip the gradient all-reduce (DDP, FSDP)
    and, under DeepSpeed, the engine step: accelerate steps a DeepSpeed engine inside every `backward`
    while `acc.sync_gradients` is set, so it is cleared until the last micro-step."""
    if last:
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
    gathered by accelerate; every process must call this (a collective). None under layouts where
    each process holds whole weights: save from the model itself. Under FSDP1 only the main process
    receives the weights."""
    if not layout_of(acc).shards_weights:
        return None
    return acc.get_state_dict(model)


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
