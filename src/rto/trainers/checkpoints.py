"""The output folder, atomic checkpoints and resume, the checkpoint of a signal-requested stop, and the
final Hugging Face model folder.

A checkpoint is written to checkpoints/.tmp-step-N and renamed when complete, so a crash at any moment
leaves the older checkpoints intact; a state with non-finite weights is never written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rto import distributed, models
from rto.config import save_config
from rto.distributed import global_sum
from rto.errors import NonFiniteError, RtoError
from rto.trainers.signals import GracefulStop, TrainingStopped, pause_point

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "rto_config.yaml"  # written by rto.config.save_config
RNG_FILE_PATTERN = "random_states_<process>.pkl"  # accelerate's name
# Config fields that may change between a run and its resume without changing the result.
RESUME_FREE_FIELDS = frozenset(
    {
        "resume",
        "progress",
        "report_to",
        "output_dir",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "threads",
        "overwrite_output_dir",
    }  # fmt: skip
)


# What a run leaves in its output folder besides checkpoints/, and of those, what only a finished run
# leaves (the final model; a run that failed early leaves its config and metrics, and may be rerun).
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, "rollouts.jsonl", "config.json", "model.safetensors",
               "model.safetensors.index.json", "adapter", "critic")  # fmt: skip
FINISHED_OUTPUTS = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter")


def prepare_output_dir(acc: Accelerator, cfg) -> Path:
    """Create the output folder (checking it is writable) and write the resolved config.

    A folder that holds an earlier run is refused, as Hugging Face trainers do, unless the run continues
    it (--resume, from its newest checkpoint) or replaces it (--overwrite-output-dir: the earlier run's
    outputs and checkpoints are deleted first, so a later --resume cannot pick up the old run's
    checkpoints). A folder left by a run that failed before saving a model or a checkpoint is reused."""
    out = Path(cfg.output_dir)
    old = list_checkpoints(out)
    finished = [n for n in FINISHED_OUTPUTS if (out / n).exists()]
    overwrite = getattr(cfg, "overwrite_output_dir", False)
    if old and not cfg.resume and not overwrite:
        raise RtoError(
            f"output folder '{out}' holds checkpoints of an earlier run (newest: {old[-1].name}); "
            "pass --resume to continue it, --overwrite-output-dir to replace it, or choose another --output-dir"
        )
    if finished and not old and not overwrite:
        raise RtoError(
            f"output folder '{out}' holds the model of a finished run ({', '.join(finished)}); pass "
            "--overwrite-output-dir to replace it, or choose another --output-dir"
            + (
                " (--resume needs a checkpoint to continue from: --save-steps writes them)"
                if cfg.resume
                else ""
            )
        )
    if acc.is_main_process:
        earlier = [n for n in (*RUN_OUTPUTS, CHECKPOINT_DIR) if (out / n).exists()]
        if overwrite and earlier:
            log.warning(
                "--overwrite-output-dir: deleting the earlier run's %s in %s", ", ".join(earlier), out
            )
            for name in earlier:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink()
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
    save_state; under FSDP2 every process writes its shards of models and optimizers, in safetensors,
    to sharded/: distributed.save_sharded_state), the states of the schedulers given to `distributed.prepare_trained` (stored as JSON,
    so that loading never unpickles), the caller's `state` (step, KL controller,
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
    schedulers = distributed.checkpointed_schedulers(acc)
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp), safe_serialization=True)
        distributed.save_sharded_state(acc, tmp)  # FSDP2: every process writes its own shards
        pause_point("checkpoint", step)
        if acc.is_main_process:
            full = {
                "step": step,
                **state,
                "registered_states": [obj.state_dict() for obj in schedulers],
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
        for m in distributed.trained_models(acc)
        for name, p in m.named_parameters()
        if not bool(torch.isfinite(distributed.local_tensor(p)).all())
    ]
    if float(global_sum(acc, [float(len(bad))])[0]) > 0:
        where = f" ({bad[0]})" if bad else ""
        raise NonFiniteError(f"non-finite weights{where} {when}: {consequence}")


def load_latest_checkpoint(acc: Accelerator, output_dir: str | Path) -> dict[str, Any] | None:
    """Restore models, optimizers, schedulers and RNG from the newest complete checkpoint.

    Loading never unpickles arbitrary objects: weights come from safetensors, optimizer and RNG states
    through accelerate's torch.load(weights_only=True), scheduler states from JSON."""
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
    schedulers = distributed.checkpointed_schedulers(acc)
    saved = state.get("registered_states", [])
    if len(saved) != len(schedulers):
        raise RtoError(
            f"{latest}: holds {len(saved)} scheduler states but this run has {len(schedulers)}; "
            "it was written by a different kind of run"
        )
    try:
        acc.load_state(str(latest))
        distributed.load_sharded_state(acc, latest)
    except RtoError:
        raise
    except Exception as e:
        raise RtoError(f"could not load checkpoint {latest}: {type(e).__name__}: {e}") from e
    for obj, obj_state in zip(schedulers, saved):
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

    Under layouts that shard weights (DeepSpeed ZeRO-3, FSDP) each process holds a slice of them, so
    every process takes part in gathering the full state dict first; a LoRA model is then rebuilt from
    the gathered weights on the main process, to merge its adapter (tested with a stand-in for the
    gather only: no GPU here)."""
    acc.wait_for_everyone()
    gathered = distributed.full_state_dict(acc, model)
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        if gathered is not None and hasattr(unwrapped, "peft_config"):
            unwrapped, gathered = models.unsharded_peft_copy(unwrapped, gathered), None
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
    distributed.finish(acc)
    raise TrainingStopped(stop.signum, step, path)
