"""What every training loop shares: the accelerator, the data order, optimizers and schedules,
metrics.jsonl, atomic checkpoints and resume, and the non-finite guard.

Data order is ours, not a DataLoader's: each epoch is a seeded permutation of example indices, cut into
*global* batches, and each process takes its contiguous share of every global batch. So the examples a
global step sees do not depend on the number of processes, and a resume only needs the step counter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from rto.config import save_config
from rto.errors import NonFiniteError, RtoError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------- setup


def make_accelerator(cfg) -> Accelerator:
    """One Accelerator per run; single process unless launched by accelerate/torchrun."""
    log_with = None if cfg.report_to == "none" else cfg.report_to
    acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with=log_with, project_dir=cfg.output_dir)
    set_seed(cfg.seed)
    return acc


def prepare_output_dir(acc: Accelerator, cfg) -> Path:
    """Create the output folder (checking it is writable) and write the resolved config."""
    out = Path(cfg.output_dir)
    if acc.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".rto_write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RtoError(f"output folder '{out}' is not writable: {e.strerror or e}") from e
        save_config(cfg, out)
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


def clip_and_check_grads(acc: Accelerator, model, max_norm: float, step: int, name: str) -> float:
    """Clip the gradient norm and return it; a non-finite norm raises NonFiniteError."""
    params = [p for p in model.parameters() if p.requires_grad]
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


def global_sum(acc: Accelerator, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum float statistics over all processes (identity on one process)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.cpu()


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl (one JSON object per logged step) plus accelerate trackers; main process only."""

    def __init__(self, acc: Accelerator, output_dir: Path, resume_step: int | None = None):
        self.acc = acc
        self.path = Path(output_dir) / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if acc.is_main_process:
            if resume_step is None:
                self.path.write_text("")
            elif self.path.exists():
                # Drop lines logged after the checkpoint we resume from: they will be logged again.
                kept = []
                for line in self.path.read_text().splitlines():
                    if line.strip():
                        rec = json.loads(line)
                        if rec.get("step", 0) <= resume_step:
                            kept.append(rec)
                self.history = kept
                self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self.history.append(rec)
        if self.acc.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        self.acc.log({k: v for k, v in rec.items() if isinstance(v, int | float)}, step=step)


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
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    acc: Accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Write to checkpoints/.tmp-step-N, then rename: a crash mid-write never touches older ones."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
            _fsync_tree(tmp)
    except OSError as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RtoError(
            f"could not write checkpoint {final}: {e.strerror or e}; older checkpoints are intact"
        ) from e
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


def load_latest_checkpoint(acc: Accelerator, output_dir: str | Path) -> dict[str, Any] | None:
    """Restore models, optimizers, schedulers and RNG from the newest complete checkpoint."""
    ckpts = list_checkpoints(output_dir)
    if not ckpts:
        return None
    latest = ckpts[-1]
    acc.load_state(str(latest))
    state = json.loads((latest / STATE_FILE).read_text())
    log.info("resumed from %s", latest)
    return state


# ----------------------------------------------------------------------------- final outputs


def save_hf_folder(
    acc: Accelerator, model, tokenizer, folder: str | Path, extra_config: dict | None = None
) -> None:
    """An ordinary Hugging Face folder (safetensors), loadable without rto."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        if hasattr(unwrapped, "merge_and_unload") and hasattr(unwrapped, "peft_config"):
            unwrapped = unwrapped.merge_and_unload()
        for k, v in (extra_config or {}).items():
            setattr(unwrapped.config, k, v)
        folder = Path(folder)
        tmp = folder.parent / f".tmp-{folder.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            # Replace only the model files we own; keep metrics and checkpoints that live beside them.
            for p in tmp.iterdir():
                target = folder / p.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(p, target)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    acc.wait_for_everyone()


def finish(acc: Accelerator) -> None:
    """Clean shutdown: trackers, then the process group (avoids aborts at exit, SPEC section 7)."""
    acc.wait_for_everyone()
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
