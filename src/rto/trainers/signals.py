"""Stopping on a signal: SIGTERM or Ctrl-C finishes the current step, then the run saves a checkpoint
and exits (see rto.trainers.checkpoints.stop_if_requested), plus the test hook that pauses a run at an
exact point."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


class GracefulStop:
    """SIGTERM (schedulers, `kill`) and Ctrl-C (SIGINT) while training: finish the current step, save a
    checkpoint, exit with status 128 + the signal number (143, 130). A second signal aborts at once.

    The handler only sets a flag; the loop polls `requested(acc)` at step boundaries (collectively, so
    every process stops at the same step). Handlers can only be installed from the main thread; from
    another thread this is a no-op and signals keep their default behaviour."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> GracefulStop:
        global _active_stop
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
            _active_stop = self
        return self

    def restore(self) -> None:
        global _active_stop
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if _active_stop is self:
            _active_stop = None

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now, without a checkpoint
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        print(
            f"rto: {signal.Signals(signum).name} received: saving a checkpoint after this step, then exiting "
            "(send it again to stop at once, without a checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self, acc: Accelerator) -> bool:
        """Whether any process got a signal (a collective call when there are several processes)."""
        local = float(self.signum or 0)
        if acc.num_processes == 1:
            return local > 0
        t = torch.tensor([local], device=acc.device)
        got = float(acc.reduce(t, reduction="sum")[0]) > 0  # a stale reduce is harmless: flags only grow
        if got and self.signum is None:
            self.signum = int(signal.SIGTERM)
        return got


_active_stop: GracefulStop | None = None


class TrainingStopped(SystemExit):
    """Raised after the checkpoint of a signal-requested stop is written; exit status 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def restores_signal_handlers(fn: Callable) -> Callable:
    """Decorator for a training entry point that installs a GracefulStop: whatever happens (a return, an
    error, a stop), the process's SIGINT/SIGTERM handlers are what they were before the call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return fn(*args, **kwargs)
        finally:
            global _active_stop
            _active_stop = None
            for s, handler in saved.items():
                signal.signal(s, handler)

    return wrapper


def pause_point(point: str, step: int) -> None:
    """Test hook (inert unless RTO_TEST_PAUSE is set): with RTO_TEST_PAUSE="<point>:<step>" the process
    creates the file named by RTO_TEST_PAUSE_FILE and waits there (up to 120 s, or until a stop signal
    arrives) so that a test can kill it at exactly this point: "step" (a step finished), "checkpoint"
    (mid-way through writing one), "rollout" (PPO, between generation and scoring), "micro" (supervised,
    after a micro-batch's backward)."""
    if os.environ.get("RTO_TEST_PAUSE") != f"{point}:{step}":
        return
    Path(os.environ["RTO_TEST_PAUSE_FILE"]).write_text(f"{point}:{step}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (_active_stop is None or _active_stop.signum is None):
        time.sleep(0.01)
