"""What every training loop shares: the accelerator, the data order, optimizers and schedules,
metrics.jsonl, atomic checkpoints and resume, and the non-finite guard.

Data order is ours, not a DataLoader's: each epoch is a seeded permutation of example indices, cut into
*global* batches, and each process takes its contiguous share of every global batch. So the examples a
global step sees do not depend on the number of processes, and a resume only needs the step counter.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from rto.config import save_config
from rto.errors import NonFiniteError, RtoError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "rto_config.yaml"  # written by rto.config.save_config
RNG_FILE_PATTERN = "random_states_<process>.pkl"  # accelerate's name
# Config fields that may change between a run and its resume without changing the result.
RESUME_FREE_FIELDS = frozenset(
    {"resume", "progress", "report_to", "output_dir", "save_steps", "save_total_limit", "logging_steps"}
)


# ----------------------------------------------------------------------------- setup


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


def prepare_output_dir(acc: Accelerator, cfg) -> Path:
    """Create the output folder (checking it is writable) and write the resolved config.

    A fresh run (no --resume) refuses a folder that holds checkpoints of an earlier run: it would
    overwrite that run's metrics, rotate its checkpoints away, and a later --resume could pick up the
    old run's newest checkpoint instead of this run's."""
    out = Path(cfg.output_dir)
    old = list_checkpoints(out)
    if old and not cfg.resume:
        raise RtoError(
            f"output folder '{out}' holds checkpoints of an earlier run (newest: {old[-1].name}); "
            "pass --resume to continue it, or choose another --output-dir"
        )
    if acc.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".rto_write_test"
            probe.write_text("ok")
            probe.unlink()
            save_config(cfg, out)
        except OSError as e:
            raise RtoError(f"output folder '{out}' is not writable: {e.strerror or e}") from e
    acc.wait_for_everyone()
    return out


def init_trackers(acc: Accelerator, cfg, project: str) -> None:
    if cfg.report_to != "none":
        from rto.config import config_to_dict

        flat = {k: v for k, v in config_to_dict(cfg).items() if isinstance(v, int | float | str | bool)}
        acc.init_trackers(project, config=flat)


def progress_bar(acc: Accelerator, cfg, total: int, desc: str, initial: int = 0):
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not (cfg.progress and acc.is_main_process),
        dynamic_ncols=True,
    )


# ----------------------------------------------------------------------------- data


def column_map(cfg):
    """The config's column-name fields as the data layer's ColumnMap."""
    from rto.data.formats import ColumnMap

    return ColumnMap(
        text=cfg.text_column,
        prompt=cfg.prompt_column,
        completion=cfg.completion_column,
        messages=cfg.messages_column,
        chosen=cfg.chosen_column,
        rejected=cfg.rejected_column,
    )


def report_counts(acc: Accelerator, stage: str, source: str, counts: dict) -> None:
    """Say how many examples were truncated or dropped: never a silent loss of data."""
    if acc.is_main_process:
        log.info(
            "%s: %s: %d examples, %d truncated, %d dropped (too long)",
            stage,
            source,
            counts.get("total", 0),
            counts.get("truncated", 0),
            counts.get("dropped", 0),
        )


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(
    n: int, global_batch: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, list[int]]]:
    """Endless (step, indices) over seeded epochs, dropping the last incomplete batch of each epoch."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise RtoError(f"dataset has {n} examples, fewer than one global batch of {global_batch}")
    step = start_step
    while True:
        epoch, within = divmod(step, per_epoch)
        order = epoch_permutation(n, seed, epoch)
        yield step, order[within * global_batch : (within + 1) * global_batch]
        step += 1


def process_share(items: list, acc: Accelerator) -> list:
    """This process's contiguous slice of a global batch (sizes must divide evenly)."""
    n, k = len(items), acc.num_processes
    if n % k:
        raise RtoError(f"global batch of {n} does not split evenly over {k} processes")
    per = n // k
    return items[acc.process_index * per : (acc.process_index + 1) * per]


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def total_steps_for(n_examples: int, global_batch: int, num_epochs: float, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.floor(n_examples * num_epochs / global_batch))


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(params, lr: float, cfg) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )


def make_scheduler(optimizer, cfg, total_steps: int):
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


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


def clip_and_check_grads(acc: Accelerator, model, max_norm: float, step: int, name: str) -> float:
    """Clip the gradient norm and return it; a non-finite norm raises NonFiniteError.

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
    norm = float(norm)
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


def global_sum(acc: Accelerator, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum float statistics over all processes (identity on one process)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.cpu()


# ----------------------------------------------------------------------------- stopping on a signal


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


def stop_if_requested(
    acc: Accelerator, stop: GracefulStop, output_dir: str | Path, step: int, state: dict[str, Any], keep: int
) -> None:
    """At a step boundary: if a stop signal arrived, save a checkpoint (unless this step already has
    one), say where it is, and raise TrainingStopped."""
    if not stop.requested(acc):
        return
    path = checkpoint_root(output_dir) / f"step-{step:08d}"
    if not (path / STATE_FILE).is_file():
        path = save_checkpoint(acc, output_dir, step, state, keep)
    name = signal.Signals(stop.signum).name
    if acc.is_main_process:
        print(
            f"rto: stopped by {name} after step {step}; checkpoint saved in {path}. "
            "Run the same command with --resume to continue.",
            file=sys.stderr,
            flush=True,
        )
    stop.restore()
    finish(acc)
    raise TrainingStopped(stop.signum, step, path)


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


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl (one JSON object per logged step) plus accelerate trackers; main process only.

    On resume the history is the copy stored in the checkpoint (lines logged after it are logged again),
    so a crash that left a torn last line, or lines past the checkpoint, loses nothing and duplicates
    nothing."""

    def __init__(self, acc: Accelerator, output_dir: Path, resume_step: int | None = None):
        self.acc = acc
        self.path = Path(output_dir) / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        if acc.is_main_process:
            if resume_step is None:
                self._write("")
            else:
                saved = checkpoint_root(output_dir) / f"step-{resume_step:08d}" / METRICS_FILE
                source = saved if saved.is_file() else self.path
                self.history = [r for r in read_jsonl(source) if r.get("step", 0) <= resume_step]
                self._write("".join(json.dumps(r) + "\n" for r in self.history))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self.history.append(rec)
        if self.acc.is_main_process:
            self._write(json.dumps(rec) + "\n", mode="a")
        self.acc.log({k: v for k, v in rec.items() if isinstance(v, int | float)}, step=step)

    def _write(self, text: str, mode: str = "w") -> None:
        try:
            with self.path.open(mode) as f:
                f.write(text)
        except OSError as e:
            raise RtoError(f"could not write {self.path}: {e.strerror or e}") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file we wrote; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                log.warning("%s: skipping a torn last line (the run was killed while writing it)", path)
                break
            raise RtoError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
    return out


def truncate_jsonl(path: Path, key: str, upto: int) -> None:
    """On resume, keep the records of a JSON-lines log whose `key` is <= upto (the rest is redone)."""
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r.get(key, 0) <= upto]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def save_checkpoint(
    acc: Accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Write everything a bit-exact continuation needs to checkpoints/.tmp-step-N, then rename it.

    Contents: model weights (safetensors), optimizer states, RNG states of every process (accelerate's
    save_state), the state of objects registered with `acc.register_for_checkpointing` (schedulers;
    stored as JSON, so that loading never unpickles), the caller's `state` (step, KL controller,
    counters), the metrics history and the run's config. The data position is the step: batches are a
    function of (seed, step). A crash at any moment leaves the older checkpoints untouched, and a state
    with non-finite weights is never written."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    previous = list_checkpoints(output_dir)
    intact = (
        f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint"
    )
    check_weights_finite(acc, f"at step {step}", f"not writing checkpoint {final}; {intact}")
    custom = acc._custom_objects
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        # Registered objects are stored as JSON by us: accelerate would pickle them and unpickle them
        # with weights_only=False on load.
        acc._custom_objects = []
        try:
            acc.save_state(str(tmp), safe_serialization=True)
        finally:
            acc._custom_objects = custom
        pause_point("checkpoint", step)
        if acc.is_main_process:
            full = {
                "step": step,
                **state,
                "registered_states": [obj.state_dict() for obj in custom],
                "rng_digest": _rng_digest(),
            }
            (tmp / STATE_FILE).write_text(json.dumps(full, indent=1))
            for name in (METRICS_FILE, CONFIG_FILE):
                if (Path(output_dir) / name).is_file():
                    shutil.copyfile(Path(output_dir) / name, tmp / name)
            _fsync_tree(tmp)
    except Exception as e:  # disk full, permissions, ...: whatever the writer raised, report it the same way
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
        raise RtoError(f"could not write checkpoint {final}: {reason}; {intact}") from e
    acc.wait_for_everyone()
    if acc.is_main_process:
        old = root / f".old-step-{step:08d}"
        if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


def _rng_digest() -> str:
    """A fingerprint of the torch and Python RNG states, to verify that a resume restored them."""
    h = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    h.update(repr(random.getstate()).encode())
    return h.hexdigest()[:16]


def check_weights_finite(acc: Accelerator, when: str, consequence: str) -> None:
    """Refuse to save a state whose weights hold NaN/inf (checked on every process, decided together)."""
    bad = [
        f"{type(acc.unwrap_model(m)).__name__}.{name}"
        for m in acc._models
        for name, p in m.named_parameters()
        if not bool(torch.isfinite(p).all())
    ]
    if float(global_sum(acc, [float(len(bad))])[0]) > 0:
        where = f" ({bad[0]})" if bad else ""
        raise NonFiniteError(f"non-finite weights{where} {when}: {consequence}")


def load_latest_checkpoint(acc: Accelerator, output_dir: str | Path) -> dict[str, Any] | None:
    """Restore models, optimizers, schedulers and RNG from the newest complete checkpoint.

    Loading never unpickles arbitrary objects: weights come from safetensors, optimizer and RNG states
    through accelerate's torch.load(weights_only=True), registered objects from JSON."""
    ckpts = list_checkpoints(output_dir)
    if not ckpts:
        log.warning(
            "--resume: no complete checkpoint in %s; starting from the beginning", checkpoint_root(output_dir)
        )
        return None
    latest = ckpts[-1]
    try:
        state = json.loads((latest / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtoError(
            f"{latest / STATE_FILE}: unreadable ({e}); delete this checkpoint to resume from the one before"
        ) from e
    custom = acc._custom_objects
    saved = state.get("registered_states", [])
    if len(saved) != len(custom):
        raise RtoError(
            f"{latest}: holds {len(saved)} scheduler/registered states but this run has {len(custom)}; "
            "it was written by a different kind of run"
        )
    acc._custom_objects = []
    try:
        acc.load_state(str(latest))
    except Exception as e:
        raise RtoError(f"could not load checkpoint {latest}: {type(e).__name__}: {e}") from e
    finally:
        acc._custom_objects = custom
    for obj, obj_state in zip(custom, saved):
        obj.load_state_dict(obj_state)
    if acc.is_main_process and state.get("rng_digest") not in (None, _rng_digest()):
        raise RtoError(
            f"{latest}: the random-number state could not be restored ({RNG_FILE_PATTERN} missing or "
            "unreadable), so the run cannot continue exactly; delete this checkpoint to resume from the one before"
        )
    _warn_config_changes(latest / CONFIG_FILE, Path(output_dir) / CONFIG_FILE)
    log.info("resumed from %s (step %d)", latest, state["step"])
    return state


def _warn_config_changes(saved: Path, current: Path) -> None:
    """Resuming with other settings is allowed (e.g. more steps) but is no longer an exact continuation."""
    if not (saved.is_file() and current.is_file()):
        return
    import yaml

    a, b = yaml.safe_load(saved.read_text()) or {}, yaml.safe_load(current.read_text()) or {}
    changed = sorted(k for k in set(a) | set(b) if k not in RESUME_FREE_FIELDS and a.get(k) != b.get(k))
    if changed:
        log.warning(
            "resuming with changed settings (%s): the continuation is not identical to an uninterrupted run",
            ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed),
        )


# ----------------------------------------------------------------------------- final outputs


def _checked_final_write(fn: Callable) -> Callable:
    """Around save_hf_folder: never write non-finite weights as the result, and report a failed write
    (disk full, permissions) as a user-facing error naming the folder."""

    @functools.wraps(fn)
    def wrapper(acc: Accelerator, model, tokenizer, folder, *args, **kwargs):
        check_weights_finite(acc, "at the end of training", f"not writing them to {folder}")
        try:
            return fn(acc, model, tokenizer, folder, *args, **kwargs)
        except Exception as e:
            if not (isinstance(e, OSError) or type(e).__name__ == "SafetensorError"):
                raise
            reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
            raise RtoError(f"could not write the trained model to {folder}: {reason}") from e

    return wrapper


@_checked_final_write
def save_hf_folder(
    acc: Accelerator, model, tokenizer, folder: str | Path, extra_config: dict | None = None
) -> None:
    """An ordinary Hugging Face folder (safetensors), loadable without rto.

    Under sharded back-ends (DeepSpeed ZeRO-3, FSDP) each process holds a slice of the weights, so every
    process takes part in gathering the full state dict first (untested here: no GPU)."""
    acc.wait_for_everyone()
    is_peft = hasattr(acc.unwrap_model(model), "peft_config")
    gathered = None
    if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP) and not is_peft:
        gathered = acc.get_state_dict(model)
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        adapter_tmp = None
        if hasattr(unwrapped, "merge_and_unload") and hasattr(unwrapped, "peft_config"):
            # LoRA: keep the trained adapter (for shared-base PPO) and write the merged model beside it.
            adapter_tmp = Path(folder) / ".tmp-adapter"
            unwrapped.save_pretrained(adapter_tmp, selected_adapters=["default"], safe_serialization=True)
            unwrapped = unwrapped.merge_and_unload()
        for k, v in (extra_config or {}).items():
            setattr(unwrapped.config, k, v)
        folder = Path(folder)
        tmp = folder / ".tmp-model"  # inside the folder: a crash leaves nothing outside the output folder
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=gathered)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if adapter_tmp is not None:
            os.replace(adapter_tmp, tmp / "adapter")
        # Replace only the model files we own; keep metrics and checkpoints that live beside them.
        for p in tmp.iterdir():
            target = folder / p.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(p, target)
        shutil.rmtree(tmp)
    acc.wait_for_everyone()


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
