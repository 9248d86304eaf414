"""JSON Lines files that rto writes itself and reads back (metrics, rollouts, generated data, scored
pairs, logs): one reader, one writer.

A torn last line (the process was killed while appending it) is skipped with a warning; any other line
that is not JSON is an error naming the file and line. Datasets given by users are read by
rto.data.loading, which names the line the same way but never skips one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rto.errors import RtoError

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; blank lines are skipped. A missing file is an error, or no
    records with `missing_ok`."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise RtoError(f"{path}: file not found")
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


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write `rows`, one JSON object per line (the folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def truncate_jsonl(path: str | Path, key: str, upto: int) -> None:
    """On resume, keep the records of a JSON-lines log whose `key` is <= upto (the rest is redone)."""
    path = Path(path)
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if r.get(key, 0) <= upto])
