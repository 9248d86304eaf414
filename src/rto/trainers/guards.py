"""Non-finite guards: find the first NaN/inf, and stop the run (naming it and the last good checkpoint)
or skip the update, with a limit on skips in a row."""

from __future__ import annotations

import logging
import math

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from rto.distributed import clip_grad_norm
from rto.errors import NonFiniteError
from rto.trainers.checkpoints import list_checkpoints

log = logging.getLogger(__name__)


def clip_and_check_grads(acc: Accelerator, model, max_norm: float, step: int, name: str) -> float:
    """Clip the gradient norm (see rto.distributed.clip_grad_norm) and return it; a non-finite norm
    raises NonFiniteError. Under DeepSpeed the norm is the engine's, NaN when it has none."""
    norm = clip_grad_norm(acc, model, max_norm)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return norm
    if not math.isfinite(norm):
        raise NonFiniteError(f"non-finite gradient norm of the {name} at step {step}")
    return norm


def check_finite(name: str, value: torch.Tensor | float, step: int) -> None:
    """Stop at the step where a NaN/inf first appears, naming the quantity."""
    ok = math.isfinite(value) if isinstance(value, float | int) else bool(torch.isfinite(value).all())
    if not ok:
        raise NonFiniteError(f"non-finite {name} at step {step}")


def first_nonfinite(named: dict[str, torch.Tensor | float | None]) -> str | None:
    """The name of the first quantity holding a NaN/inf, in the order given (None entries are skipped);
    list upstream quantities first so the message names where the fault appeared."""
    for name, value in named.items():
        if value is None:
            continue
        ok = math.isfinite(value) if isinstance(value, float | int) else bool(torch.isfinite(value).all())
        if not ok:
            return name
    return None


def nonfinite_error(cfg, message: str) -> NonFiniteError:
    """The error that stops a run (on_nonfinite="stop"): what and when, and where the last good state is."""
    ckpts = list_checkpoints(cfg.output_dir)
    last = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
    return NonFiniteError(
        f"{message}; stopped before updating the weights ({last}); "
        "--on-nonfinite skip would skip such updates instead"
    )


class SkipGuard:
    """on_nonfinite="stop" raises at the first non-finite update; "skip" logs a warning and returns so the
    caller skips the update, until ``max_consecutive_skips`` updates in a row were skipped (a run that
    only skips would train nothing while looking alive). Either way no optimizer step is taken with the bad
    values, so the weights stay finite."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.in_a_row = 0

    def skip(self, err: NonFiniteError) -> None:
        cfg = self.cfg
        if cfg.on_nonfinite == "stop":
            raise nonfinite_error(cfg, str(err)) from err
        self.in_a_row += 1
        limit = getattr(cfg, "max_consecutive_skips", 0)
        if limit and self.in_a_row >= limit:
            raise nonfinite_error(
                cfg,
                f"{err}: {self.in_a_row} updates in a row were non-finite (max_consecutive_skips={limit})",
            ) from err
        log.warning("%s: skipping this update (on_nonfinite=skip)", err)

    def ok(self) -> None:
        """An update was taken."""
        self.in_a_row = 0
