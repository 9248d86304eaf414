"""What a run reports: metrics.jsonl (plus accelerate's trackers), the progress bar, and the counts of
truncated and dropped examples."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rto.errors import RtoError
from rto.jsonl import read_jsonl
from rto.trainers.checkpoints import METRICS_FILE, checkpoint_root

log = logging.getLogger(__name__)


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
        disable=not (cfg.progress and acc.is_main_process and sys.stderr.isatty()),
        dynamic_ncols=True,
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
                self.history = [
                    r for r in read_jsonl(source, missing_ok=True) if r.get("step", 0) <= resume_step
                ]
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


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
