"""The one job runner of `rto demo` and `rto experiment`: run functions, in this process or in worker
processes, and time them.

A call is a function named ``"module:function"`` with JSON-able keyword arguments (so it can be sent to a
worker process, and nothing is looked up by name in a module's globals). ``execute`` runs a list of calls,
in this process (``workers`` 1) or in a pool of ``workers`` spawned processes with ``threads`` torch
threads each, and returns each call's result with its wall-clock and CPU seconds (the CPU seconds of the
process that ran it: a measure that other jobs on the machine barely move). A call may name a log file:
its output (stdout and stderr, also of the libraries it calls) then goes there. A SIGTERM or Ctrl-C stops
the workers with SIGTERM too (trainers save a checkpoint at their next step and exit), so an interrupted
run can be continued.

Two kinds of cache sit on top of it, each keyed as its user needs:

- ``Stages`` (the demo and the experiments' shared world): named folders, each completed stage marked by a
  file holding the settings it was made with (its *signature*); ``--reuse`` reuses a stage only when they
  are unchanged.
- cells (``rto.experiments.cells``): folders named by the hash of their configuration, done when their
  ``result.json`` exists.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE_MARKER = ".rto_demo_stage.json"  # written when a stage has completed
STARTED_MARKER = ".rto_demo_started.json"  # written when a stage starts


@dataclass
class Call:
    """One function call: ``func`` ("module:function") called as func(**kwargs)."""

    func: str
    kwargs: dict = field(default_factory=dict)
    log: str | None = None  # file that receives the call's output (worker processes only)
    progress: str | None = None  # a metrics.jsonl whose lines count the call's steps, for a progress bar
    total: int = 0  # steps the call will take (progress bar)
    name: str = ""


@dataclass
class Outcome:
    result: Any
    wall_s: float
    cpu_s: float


def resolve_function(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"a function is named 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def quiet_transformers() -> None:
    """Model loading and saving print their own progress bars and init notices: noise in a long run."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _worker_init(threads: int) -> None:
    import logging

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_transformers()


def _call(call: Call) -> Outcome:
    """Run one call in this process, its output to ``call.log`` if given."""
    func = resolve_function(call.func)
    saved = None
    if call.log:
        Path(call.log).parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush(), sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        fd = os.open(call.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os.close(fd)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = func(**call.kwargs)
    except BaseException:
        if call.log:
            import traceback

            traceback.print_exc()
        raise
    finally:
        if saved is not None:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
    return Outcome(result, time.perf_counter() - t0, time.process_time() - c0)


def _count_lines(path: str | None) -> int:
    if not path:
        return 0
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def execute(
    calls: Sequence[Call],
    workers: int = 1,
    threads: int = 1,
    on_done: Callable[[Call, Outcome], None] | None = None,
    progress: bool = False,
) -> list[Outcome]:
    """Outcomes of ``calls`` in order. With ``workers`` > 1 and more than one call they run in that many
    spawned processes (one-off start cost: imports, ~5 s each); otherwise here, one after the other.
    ``on_done`` is called as each finishes. The first failure is raised once every running call has
    ended (calls not yet started are cancelled)."""
    if workers <= 1 or len(calls) <= 1:
        outs = []
        for c in calls:
            outs.append(_call(c))
            if on_done:
                on_done(c, outs[-1])
        return outs
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    bars = {
        i: tqdm(total=c.total or None, desc=c.name or c.func, disable=not (progress and c.progress and sys.stderr.isatty()),
                position=i, leave=True, dynamic_ncols=True)
        for i, c in enumerate(calls)
    }  # fmt: skip
    results: dict[int, Outcome] = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the workers too when stopped
    pool = ProcessPoolExecutor(
        min(workers, len(calls)), mp_context=mp.get_context("spawn"), initializer=_worker_init,
        initargs=(threads,),
    )  # fmt: skip
    futures = {pool.submit(_call, c): i for i, c in enumerate(calls)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for i, bar in bars.items():
                n = _count_lines(calls[i].progress)
                if n > bar.n:
                    bar.update(n - bar.n)
            for fut in done:
                i = futures[fut]
                bars[i].close()
                if fut.exception() is not None:
                    continue
                results[i] = fut.result()
                if on_done:
                    on_done(calls[i], results[i])
    except BaseException:
        # SIGTERM/Ctrl-C: cancel what has not started, ask the running workers to stop (a trainer saves a
        # checkpoint at its next step and exits), then make sure they are gone.
        pool.shutdown(wait=False, cancel_futures=True)
        children = mp.active_children()
        for p in children:
            p.terminate()
        for p in children:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for bar in bars.values():
            bar.close()
    pool.shutdown(wait=True)
    for fut in futures:
        if fut.exception() is not None:
            raise fut.exception()
    return [results[i] for i in range(len(calls))]


# ----------------------------------------------------------------------------- stages


@dataclass
class Job:
    """One stage: ``func`` ("module:function") called as func(**kwargs), writing into ``folder``; its
    output depends on the settings in ``signature``. ``resumable``: an interrupted run of the same stage
    with the same settings is continued from its checkpoints (``kwargs['resume']`` tells the function)."""

    name: str
    folder: Path
    signature: dict
    func: str
    kwargs: dict = field(default_factory=dict)
    total: int = 0  # optimizer steps / iterations, for the progress bar of a parallel run
    resumable: bool = False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _same(a: dict, b: dict) -> bool:
    return a == json.loads(json.dumps(b))


class Stages:
    """Runs stages, timing each (wall and CPU seconds) and skipping completed ones when ``reuse``.
    Independent stages given together to ``run_parallel`` run in ``workers`` processes."""

    def __init__(self, workers: int = 1, threads: int = 1, reuse: bool = False, progress: bool = True):
        self.workers, self.threads, self.reuse, self.progress = workers, threads, reuse, progress
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of the stage's process: a load-independent measure
        self.reused: list[str] = []  # stages taken from an earlier run (their times are that run's)

    def _reusable(self, job: Job) -> bool:
        marker = _read_json(job.folder / STAGE_MARKER)
        if not (self.reuse and marker and _same(marker.get("signature"), job.signature)):
            return False
        print(f"== {job.name}: reusing {job.folder}", flush=True)
        self.timings[job.name] = float(marker.get("seconds") or 0.0)
        if marker.get("cpu_seconds") is not None:
            self.cpu[job.name] = float(marker["cpu_seconds"])
        self.reused.append(job.name)
        return True

    def _start(self, job: Job) -> None:
        """Make the stage's folder ready: a folder left by an interrupted run of the same stage with the same
        settings is continued when the stage can resume (from its last checkpoint, under reuse); otherwise
        it is cleared, so no stale file or checkpoint mixes into the new run."""
        started = job.folder / STARTED_MARKER
        same = self.reuse and started.is_file() and _same(_read_json(started).get("signature"), job.signature)
        resume = same and job.resumable and (job.folder / "checkpoints").is_dir()
        if job.folder.exists() and not resume and job.name != "data":  # data/ also holds labels/
            shutil.rmtree(job.folder)
        job.folder.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"signature": job.signature}))
        if job.resumable:
            job.kwargs["resume"] = bool(resume)
            if resume:
                print(f"== {job.name}: continuing the interrupted run from its last checkpoint", flush=True)

    def _finish(self, job: Job, out: Outcome) -> None:
        self.timings[job.name], self.cpu[job.name] = out.wall_s, out.cpu_s
        marker = {"signature": job.signature, "seconds": out.wall_s, "cpu_seconds": out.cpu_s}
        (job.folder / STAGE_MARKER).write_text(json.dumps(marker, indent=1))
        print(f"== {job.name}: {out.wall_s:.1f}s (CPU {out.cpu_s:.1f}s)", flush=True)

    def run(self, job: Job) -> None:
        """Run one stage in this process."""
        if self._reusable(job):
            return
        self._start(job)
        print(f"\n== {job.name} ==", flush=True)
        self._finish(job, _call(Call(job.func, job.kwargs)))

    def run_parallel(self, jobs: list[Job]) -> None:
        """Run independent stages in up to ``workers`` processes (one torch thread each unless ``threads``
        says otherwise); each logs to <folder>.log, progress bars follow their metrics.jsonl."""
        from rto.errors import RtoError

        todo = [j for j in jobs if not self._reusable(j)]
        if self.workers <= 1 or len(todo) <= 1:
            for j in todo:
                self.run(j)
            return
        print(
            f"\n== {', '.join(j.name for j in todo)} ({min(self.workers, len(todo))} in parallel) ==",
            flush=True,
        )
        for j in todo:
            self._start(j)
        calls = [
            Call(j.func, j.kwargs, log=str(self.log_path(j)), progress=str(j.folder / "metrics.jsonl"),
                 total=j.total, name=j.name)
            for j in todo
        ]  # fmt: skip
        by_call = {id(c): j for c, j in zip(calls, todo)}
        try:
            execute(
                calls, self.workers, self.threads, lambda c, o: self._finish(by_call[id(c)], o), self.progress
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            job = next(j for j in todo if j.name not in self.timings)
            log_path = self.log_path(job)
            tail = (
                "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
                if log_path.is_file()
                else ""
            )
            raise RtoError(
                f"stage '{job.name}' failed ({type(e).__name__}: {e}); last lines of {log_path}:\n{tail}\n"
                "(--reuse continues the run: completed stages are kept, interrupted PPO/RTO runs resume)"
            ) from e

    @staticmethod
    def log_path(job: Job) -> Path:
        return job.folder.with_name(job.folder.name + ".log")


__all__ = ["Call", "Outcome", "execute", "Job", "Stages", "STAGE_MARKER", "resolve_function"]
