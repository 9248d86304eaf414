"""Cells: the unit of work of an experiment, cached on disk by the hash of their configuration.

A cell is a pure function of its spec (a JSON-able dict: what to run, with which settings and seed).
Its folder is ``<out>/cells/<hash>/``; ``result.json`` there, written atomically (temp file + rename),
marks it finished. Running an experiment again computes only the cells without a result, so an
interrupted run continues where it stopped. Every computation appends one line to ``<out>/cells.log``,
which is how a test (or a user) sees what actually ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rto.jsonl import read_jsonl

RESULT = "result.json"


def cell_hash(spec: dict) -> str:
    """Stable 16-hex-digit hash of a spec: key order does not matter, values are compared as JSON
    (1 and 1.0 differ on purpose: the spec is written by code, not by hand)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_dir(out: str | Path, spec: dict) -> Path:
    return Path(out) / "cells" / cell_hash(spec)


def write_json_atomic(path: Path, obj: Any) -> None:
    """A reader never sees half a file: write beside it, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_result(out: str | Path, spec: dict) -> dict | None:
    path = cell_dir(out, spec) / RESULT
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def compute_cell(out: str, spec: dict, func: str) -> dict:
    """Compute one cell (in this or a worker process): ``func`` ("module:function") called with the spec
    and the cell's folder."""
    from rto.runner import resolve_function

    folder = cell_dir(out, spec)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
    return resolve_function(func)(spec, folder)


def _store(out: str, spec: dict, result: dict, wall_s: float, cpu_s: float) -> dict:
    h = cell_hash(spec)
    result = {**result, "spec": spec, "hash": h, "wall_s": wall_s, "cpu_s": cpu_s}
    write_json_atomic(cell_dir(out, spec) / RESULT, result)
    with (Path(out) / "cells.log").open("a") as f:
        f.write(json.dumps({"hash": h, "kind": spec.get("kind"), "wall_s": wall_s}) + "\n")
    return result


# The world files every cell reads: the prompts and SFT data, the labelled pairs, the SFT model.
WORLD_FILES = ("data/*.jsonl", "data/labels/*.jsonl", "sft/model.safetensors", "sft/tokenizer.json")


def world_fingerprint(out: str | Path) -> str | None:
    """SHA-256 of the world files under ``<out>/world`` that cells read (None without a built world). Two
    experiment folders with the same fingerprint can share cells: a cell's hash covers its settings, this
    covers the data and SFT model those settings produced."""
    world = Path(out) / "world"
    files = sorted(f for pattern in WORLD_FILES for f in world.glob(pattern) if f.is_file())
    if not (world / "sft" / "model.safetensors").is_file():
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(world)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def adopt_cell(out: str | Path, src_out: str | Path, h: str) -> bool:
    """Copy the finished cell ``h`` of another experiment folder into ``out`` (whole, then renamed into
    place, so an interruption leaves no half cell); False when ``src_out`` has no finished cell ``h``."""
    src = Path(src_out) / "cells" / h
    if not (src / RESULT).is_file():
        return False
    dest = Path(out) / "cells" / h
    tmp = dest.with_name(f".{h}.{os.getpid()}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)  # an unfinished attempt of this run
    os.replace(tmp, dest)
    return True


def run_cells(
    out: str | Path,
    specs: Sequence[dict],
    func: str,
    workers: int = 1,
    threads: int = 1,
    on_done: Callable[[dict], None] | None = None,
    reuse_from: Sequence[str | Path] = (),
) -> list[dict]:
    """Results of ``specs`` in order: cached ones read from disk, finished ones of the experiment folders
    ``reuse_from`` (same world: see ``world_fingerprint``) copied in, the rest computed by ``func``
    ("module:function" taking (spec, folder) and returning a JSON-able dict) with rto.runner, in
    ``workers`` processes (each cell's output then goes to ``cells/<hash>/cell.log``). Duplicate specs
    are computed once; each result is stored as soon as its cell is done."""
    from rto.runner import Call, execute, quiet_transformers

    out = str(out)
    results: dict[str, dict] = {}
    todo: dict[str, dict] = {}
    adopted = 0
    for s in specs:
        h = cell_hash(s)
        if h in results or h in todo:
            continue
        cached = load_result(out, s)
        if cached is None and any(adopt_cell(out, src, h) for src in reuse_from):
            cached = load_result(out, s)
            adopted += cached is not None
        if cached is not None:
            results[h] = cached
        else:
            todo[h] = s
    if adopted:
        print(f"   {adopted} cell(s) reused from {', '.join(map(str, reuse_from))}", flush=True)
    if todo:
        print(f"   {len(todo)} cell(s) to compute, {len(results)} cached", flush=True)
    parallel = workers > 1 and len(todo) > 1
    if not parallel:
        quiet_transformers()
    calls = [
        Call("rto.experiments.cells:compute_cell", {"out": out, "spec": s, "func": func},
             log=str(cell_dir(out, s) / "cell.log") if parallel else None, name=h)
        for h, s in todo.items()
    ]  # fmt: skip

    def done(call: Call, o) -> None:
        spec = call.kwargs["spec"]
        results[call.name] = _store(out, spec, o.result, o.wall_s, o.cpu_s)
        if on_done:
            on_done(results[call.name])

    execute(calls, workers, threads, done)
    return [results[cell_hash(s)] for s in specs]


def computed_log(out: str | Path) -> list[dict]:
    """The cells computed so far in ``out`` (one entry per computation, in order)."""
    return read_jsonl(Path(out) / "cells.log", missing_ok=True)
