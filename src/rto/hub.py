"""Where a model or dataset name points, decided before any library starts downloading.

A name is a local path when it exists, or when it cannot be a Hub id: it starts with '.', '/' or '~',
ends like a file, has more than one '/', or its first part is a local folder (``out/nope`` while ``out/``
exists). A local path that does not exist is "not found" at once. Any other name is tried as a Hugging
Face Hub id only if the Hub can answer: it is in the local Hugging Face cache, or the Hub is reachable
(one HEAD request with a short timeout). Otherwise it is "not found" at once, instead of a minute of
retries ending in a connection error.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path

from rto.errors import DataError, RtoError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".safetensors", ".gguf", ".bin", ".pt", ".yaml")
HUB_TIMEOUT_S = 3.0


def looks_local(name: str) -> bool:
    """True when ``name`` can only be a local path (see the module docstring)."""
    if name.startswith((".", "/", "~")) or name.lower().endswith(FILE_SUFFIXES):
        return True
    parts = name.strip("/").split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline(datasets: bool = False) -> bool:
    """The Hugging Face offline switches (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE)."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if datasets else [])
    return any(_env_true(n) for n in names)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One HEAD request to the Hub endpoint (HF_ENDPOINT, proxies from the environment); any HTTP
    answer counts as reachable."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_TIMEOUT_S)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def in_hub_cache(repo_id: str) -> bool:
    """True when the local Hugging Face cache holds a model or tokenizer of ``repo_id``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(
            isinstance(try_to_load_from_cache(repo_id, f), str)
            for f in ("config.json", "tokenizer_config.json")
        )
    except Exception:  # an invalid repo id
        return False


def check_model_source(what: str, name: str) -> None:
    """Raise "not found" unless ``name`` is an existing local path or a Hub id that can be loaded."""
    if not name:
        raise RtoError(f"no {what} given")
    if Path(name).expanduser().exists():
        return
    if looks_local(name):
        raise RtoError(f"{what}: folder not found: {name}")
    if in_hub_cache(name):
        return
    if offline():
        raise RtoError(
            f"{what}: not found: {name} (no such local folder, not in the Hugging Face cache, and "
            "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE switch the Hub off)"
        )
    if not hub_reachable():
        raise RtoError(
            f"{what}: not found: {name} (no such local folder, not in the Hugging Face cache, and the Hub "
            "cannot be reached to look for it)"
        )


def check_dataset_source(source: str) -> None:
    """Raise "not found" unless ``source`` exists locally or is a Hub dataset name that can be loaded
    (offline, `datasets` looks in its own cache and fails at once when it is not there)."""
    if Path(source).expanduser().exists():
        return
    if looks_local(source):
        raise DataError(f"{source}: no such file or folder")
    if not offline(datasets=True) and not hub_reachable():
        raise DataError(
            f"{source}: not found (no such local file or folder, and the Hugging Face Hub cannot be reached "
            "to load it as a Hub dataset)"
        )


MODEL_FIELDS = ("model", "ref_model", "policy", "dpo_model", "reward_model", "critic")
DATA_FIELDS = ("data", "prompts")


def check_config_sources(cfg) -> None:
    """Every model and dataset a stage's config names, before the stage creates anything."""
    for name in MODEL_FIELDS:
        if getattr(cfg, name, None):
            check_model_source("--" + name.replace("_", "-"), getattr(cfg, name))
    for name in DATA_FIELDS:
        if getattr(cfg, name, None):
            check_dataset_source(getattr(cfg, name))


__all__ = [
    "check_config_sources",
    "check_dataset_source",
    "check_model_source",
    "hub_reachable",
    "looks_local",
]
