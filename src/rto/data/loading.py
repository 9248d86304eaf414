"""Read rows (a list of dicts) from a local file, a saved dataset folder, or the Hugging Face Hub.

Local JSON/JSONL/CSV files are parsed here with the standard library, not through `datasets`,
so that an error can name the exact file and line. Everything downstream works on plain
``list[dict]``: the datasets we train on fit in memory, and plain rows keep the format code simple.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rto.errors import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def load_rows(source: str, split: str = "train", subset: str | None = None) -> list[dict]:
    """Load `source` as a list of row dicts.

    `source` may be
      - a local ``.json`` file: a list of objects, or an object holding that list under the key
        `split` or ``"data"``; a ``.json`` file that is really JSON Lines is read as JSONL;
      - a local ``.jsonl`` file (one object per line, blank lines ignored);
      - a local ``.parquet`` or ``.csv`` file (CSV cells are strings);
      - a local folder written by ``datasets.save_to_disk`` (a ``DatasetDict`` folder is indexed by
        `split`), or any other local folder ``datasets.load_dataset`` understands;
      - otherwise a Hub dataset name, loaded with ``datasets.load_dataset(source, subset, split=split)``.

    `split` only selects something for JSON objects keyed by split, dataset folders and Hub
    datasets; a single data file is the whole split. Every failure is a `DataError` naming the
    file (and the line where there is one).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        rows = _load_folder(path, split, subset)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = _load_jsonl(path)
        elif suffix == ".json":
            rows = _load_json(path, split)
        elif suffix == ".csv":
            rows = _load_csv(path)
        elif suffix == ".parquet":
            rows = _load_parquet(path)
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
                f"use one of {', '.join(FILE_SUFFIXES)} or a folder saved with datasets.save_to_disk"
            )
    else:
        from rto.hub import check_dataset_source

        check_dataset_source(source)
        rows = _load_hub(source, split, subset)
    if not rows:
        raise DataError(f"{source}: contains no rows")
    return rows


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # tolerate a BOM written by some editors
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _check_object(path: Path, line: int | None, value: object, what: str) -> dict:
    if not isinstance(value, dict):
        where = f"{path}:{line}" if line is not None else str(path)
        raise DataError(f"{where}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _load_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        rows.append(_check_object(path, lineno, value, "each line"))
    return rows


def _load_json(path: Path, split: str) -> list[dict]:
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: this is JSON Lines named .json
            return _load_jsonl(path)
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(value, dict):
        key = split if isinstance(value.get(split), list) else "data"
        if not isinstance(value.get(key), list):
            raise DataError(
                f"{path}: expected a list of objects, or an object with a {split!r} or 'data' list; "
                f"found an object with keys {sorted(value)[:10]}"
            )
        value = value[key]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of objects, got {type(value).__name__}")
    for i, row in enumerate(value, start=1):
        _check_object(path, None, row, f"item {i}")
    return value


def _load_csv(path: Path) -> list[dict]:
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row")
    rows = []
    try:
        for row in reader:
            if None in row:  # DictReader stores surplus cells under the key None
                raise DataError(
                    f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(row[None])} cells "
                    f"but the header has {len(reader.fieldnames)} columns"
                )
            rows.append(dict(row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    return rows


def _load_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read as parquet: {e}") from None


def _load_folder(path: Path, split: str, subset: str | None) -> list[dict]:
    import datasets

    saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
    try:
        ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path), subset)
    except Exception as e:
        raise DataError(f"{path}: cannot load dataset folder: {e}") from None
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; available splits: {sorted(ds)}")
        ds = ds[split]
    return ds.to_list()


def _load_hub(source: str, split: str, subset: str | None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(source, subset, split=split)
    except Exception as e:
        raise DataError(
            f"{source!r}: no local file or folder has this name, so it was treated as a Hugging Face "
            f"Hub dataset name (subset={subset!r}, split={split!r}), and loading it failed: "
            f"{type(e).__name__}: {e}"
        ) from None
    return ds.to_list()
