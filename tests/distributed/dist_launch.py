"""Helpers for the 2-process tests: build tiny model folders and launch dist_worker.py under torchrun."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]
DDP_CPU_CONFIG = REPO / "configs" / "accelerate" / "ddp_cpu.yaml"
FSDP2_CONFIG = REPO / "configs" / "accelerate" / "fsdp2.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    """One thread per process (2 processes on 2 cores), offline, quiet."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
    )
    return env


def cli_args(stage: str, config: dict) -> list[str]:
    """The `rto <stage> ...` command line for a config dict (flags are field names with dashes)."""
    argv = [stage]
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def kill_launch(proc: subprocess.Popen, report: Path, worker: Path = WORKER) -> None:
    """Kill what a launch left running: the launcher's session, and the workers, which torch's launcher
    starts in sessions of their own (each worker writes its pid at start; see dist_worker.py)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid_file in report.glob("pid*"):
        pid = int(pid_file.read_text())
        with contextlib.suppress(OSError):
            if worker.name in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)


def launch(
    runs: list[dict],
    workdir: Path,
    nproc: int = 2,
    watch: list[Path] = (),
    launcher: str = "torchrun",
    timeout: float = 240,
    worker: Path = WORKER,
    extra: dict | None = None,
    env: dict | None = None,
    kill_when: Path | None = None,
) -> list | None:
    """Run `runs` (see dist_worker.py) in one multi-process launch; returns the per-rank reports.

    The launch lines are the ones docs/distributed.md gives users: `torchrun --nproc_per_node N` (as
    python -m torch.distributed.run), `accelerate launch --config_file configs/accelerate/ddp_cpu.yaml`
    (launcher "accelerate") or `.../fsdp2.yaml` ("accelerate-fsdp2"). `env` is added to the processes'
    environment. With `kill_when`, every process is killed with SIGKILL as soon as that file exists (a
    job killed mid-run); None is returned."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report"
    spec = workdir / "spec.json"
    spec.write_text(
        json.dumps({"report": str(report), "watch": [str(w) for w in watch], "runs": runs, **(extra or {})})
    )
    port = str(free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
    elif launcher in ("accelerate", "accelerate-fsdp2"):
        config = DDP_CPU_CONFIG if launcher == "accelerate" else FSDP2_CONFIG
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(nproc), "--main_process_port", port]  # fmt: skip
    else:
        raise ValueError(launcher)
    cmd += [str(worker), str(spec)]
    # Output goes to files, not pipes: a worker that outlives its launcher must not keep us waiting.
    log_out, log_err = workdir / "stdout.log", workdir / "stderr.log"
    with log_out.open("w") as out, log_err.open("w") as err:
        proc = subprocess.Popen(
            cmd, env={**child_env(), **(env or {})}, stdout=out, stderr=err, start_new_session=True
        )
        try:
            if kill_when is None:
                proc.wait(timeout=timeout)
            else:
                deadline = time.monotonic() + timeout
                while not kill_when.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_launch(proc, report, worker)
    if kill_when is not None:
        if not kill_when.exists():
            raise AssertionError(
                f"{launcher}: never reached {kill_when.name}:\n{log_out.read_text()[-4000:]}\n"
                f"{log_err.read_text()[-8000:]}"
            )
        return None
    if proc.returncode != 0:
        what = "timed out" if proc.returncode == -signal.SIGKILL else f"failed ({proc.returncode})"
        raise AssertionError(
            f"{launcher} {what}:\n{log_out.read_text()[-4000:]}\n{log_err.read_text()[-8000:]}"
        )
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(nproc)]


def weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / name))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# ----------------------------------------------------------------------------- tiny worlds


def eos_prone_gpt2(tokenizer, seed: int, eos_logit: float = 4.5):
    """A tiny GPT-2 that ends a response early with probability ~0.25 per token, so responses (and the
    per-process response widths that the rollout gather must align) have different lengths.

    The final LayerNorm's output coordinate 0 is made constant (weight 0, bias 1) and the EOS embedding,
    tied to the output layer, gets eos_logit there: the EOS logit is ~eos_logit at every position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[tokenizer.eos_token_id, 0] = eos_logit
    return model


def score_gpt2(tokenizer, seed: int, mean: float = 0.0, std: float = 1.0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(cfg)
    model.config.rto_score_mean = mean
    model.config.rto_score_std = std
    return model


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def one_thread():
    """Run the in-process 1-process references on one thread, like each worker process: for these tiny
    models extra threads only add synchronisation, and on a busy 2-core machine they cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The mark of every 2-process test module (its ``pytestmark``).
NEEDS_GLOO = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)

# Metrics that measure time, not training: never compared between runs.
NOT_COMPARED = {"time_generate_s", "time_score_s", "time_train_s", "tokens_per_s"}


def read_rollouts(folder: Path) -> dict:
    """A run's rollouts.jsonl keyed by (iteration, sample)."""
    records = [json.loads(x) for x in (folder / "rollouts.jsonl").read_text().splitlines()]
    keyed = {(r["iteration"], r["sample"]): r for r in records}
    assert len(keyed) == len(records), "a sample was dumped twice"
    return keyed


def assert_same_rollouts(a: dict, b: dict, atol: float) -> None:
    """Token ids equal; every float (and list of floats) within ``atol``."""
    assert a.keys() == b.keys()
    for key in a:
        ra, rb = a[key], b[key]
        for field in ("prompt_ids", "response_ids", "ended"):
            assert ra[field] == rb[field], (key, field)
        for field, va in ra.items():
            vb = rb[field]
            if isinstance(va, list) and va and isinstance(va[0], float):
                assert max(abs(x - y) for x, y in zip(va, vb)) <= atol, (key, field)
            elif isinstance(va, float):
                assert va == pytest.approx(vb, abs=atol), (key, field)


def assert_same_metrics(a: list[dict], b: list[dict], tol: float) -> None:
    """The same steps and keys; finite floats within ``tol``, everything else equal (timings aside)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra.keys() - NOT_COMPARED:
            va, vb = ra[k], rb[k]
            if isinstance(va, float) and math.isfinite(va):
                assert va == pytest.approx(vb, rel=tol, abs=tol), (ra["step"], k, va, vb)
            else:
                assert va == vb, (ra["step"], k)
