"""Everything that depends on how many processes run and how the work is laid out over them: the
accelerator, gradient accumulation across processes, the gradient norm, sums over processes and the
clean shutdown of the process group.

rto has no distributed layer of its own: all of this goes through accelerate (DDP, FSDP, DeepSpeed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

log = logging.getLogger(__name__)


def make_accelerator(cfg) -> Accelerator:
    """One Accelerator per run; single process unless launched by accelerate/torchrun.

    On a machine without an accelerator device we must say cpu=True: otherwise accelerate, launched by
    torchrun, reports a single process (DistributedType.NO) in every rank, and each rank trains alone."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    if getattr(cfg, "deterministic", False):
        use_deterministic_kernels()
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


@contextlib.contextmanager
def accumulation_step(acc: Accelerator, model, last: bool):
    """One micro-step of gradient accumulation. Non-final ones skip the gradient all-reduce (DDP, FSDP)
    and, under DeepSpeed, the engine step: accelerate steps a DeepSpeed engine inside every `backward`
    whose sync flag is set, so the flag is cleared until the last micro-step."""
    if last:
        yield
        return
    state = acc.gradient_state
    state._set_sync_gradients(False)
    try:
        with acc.no_sync(model):
            yield
    finally:
        state._set_sync_gradients(True)


def clip_grad_norm(acc: Accelerator, model, max_norm: float) -> float:
    """Clip the gradient norm of the model's trainable parameters to `max_norm` (0: no clipping) and
    return the norm before clipping.

    Under DeepSpeed the engine has already clipped (its config's gradient_clipping) and stepped inside
    the last `backward`; accelerate only reads its norm back (None when the engine has none: NaN here)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if acc.distributed_type == DistributedType.DEEPSPEED:
        norm = acc.clip_grad_norm_(params, max_norm)
        return float("nan") if norm is None else float(norm)
    if max_norm and max_norm > 0:
        norm = acc.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])
        )
    return float(norm)


def global_sum(acc: Accelerator, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum float statistics over all processes (identity on one process)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.cpu()


def finish(acc: Accelerator) -> None:
    """Clean shutdown: trackers, then the process group (avoids aborts at exit, SPEC section 7).

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
