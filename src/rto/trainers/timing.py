"""Wall-clock timing of named phases, and peak-memory probes, for `rto bench`.

A GPU runs asynchronously: without a synchronisation, a phase's kernels would be charged to whichever
later phase happens to wait for them. `PhaseTimer` therefore synchronises the device at both ends of a
phase (a no-op on CPU). Phases may nest ("score" around "score.ref"): each name accumulates its own
total, so never add a phase to the phases inside it.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued device work (CUDA only; CPU work is already done when a call returns)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Accumulates seconds per phase name: ``with timer.phase("generation"): ...``.

    ``seconds`` is wall-clock time; ``cpu_seconds`` is the process's CPU time (all its threads) over the
    same stretch, which other jobs on a shared machine disturb much less than wall time.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] += time.perf_counter() - t0
            self.cpu_seconds[name] += time.process_time() - c0
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.cpu_seconds.clear()
        self.calls.clear()


@contextlib.contextmanager
def patched(owner: object, attribute: str, replacement: object) -> Iterator[None]:
    """Temporarily replace ``owner.attribute`` (a module-level function, typically) and restore it."""
    original = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


# ----------------------------------------------------------------------------- memory

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a stretch of work: resident set size of the process (CPU) and, on CUDA,
    the allocator's allocated and reserved peaks.

    Linux lets a process reset its RSS high-water mark (write "5" to /proc/self/clear_refs), so each
    stretch gets its own peak. Where that is not possible the peak is the process's lifetime maximum
    (``ru_maxrss``) and ``rss_is_lifetime_peak`` says so.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.resettable = self._try_reset()

    @staticmethod
    def _try_reset() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return _status_kb("VmHWM") is not None

    def reset(self) -> None:
        if self.resettable:
            self.resettable = self._try_reset()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float]:
        """{"rss_mb", "rss_is_lifetime_peak", and on CUDA "cuda_allocated_mb", "cuda_reserved_mb"}."""
        hwm = _status_kb("VmHWM") if self.resettable else None
        if hwm is None:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, kB on Linux
        out: dict[str, float] = {"rss_mb": hwm / 1024, "rss_is_lifetime_peak": float(not self.resettable)}
        if self.device is not None and self.device.type == "cuda":
            out["cuda_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["cuda_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        return out
