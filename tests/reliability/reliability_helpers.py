"""Shared pieces of the reliability tests: a tiny world of models and data, the `rto` command run in
child processes that a test can kill at a chosen point, and comparisons of finished runs.

Child processes are forked from a "zygote": one Python process that has imported torch, transformers
and rto once. Each run is then a real process of its own (killable with SIGKILL, with its own signal
handlers and exit status) that costs no interpreter start-up, which keeps these tests fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2ForSequenceClassification

from tests.conftest import make_tiny_gpt2
from tests.trainers.helpers import preference_rows, prompt_rows, sft_rows, write_jsonl

# Metrics that measure wall-clock time: they differ between any two runs.
TIMING_KEYS = ("time_", "tokens_per_s")


# ----------------------------------------------------------------------------- a tiny world


def score_model(tokenizer, seed: int, stats: tuple[float, float] | None = (0.1, 2.0)):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(cfg)
    if stats is not None:
        model.config.rto_score_mean, model.config.rto_score_std = stats
    return model


def build_world(root: Path, tokenizer) -> Path:
    """sft/ (causal LM), dpo/ (the SFT model moved a little), rm/ (with score stats), rm_nostats/,
    and sft.jsonl, pref.jsonl, prompts.jsonl."""
    sft = make_tiny_gpt2(tokenizer, seed=0, n_embd=16, n_layer=1)
    sft.save_pretrained(root / "sft")
    dpo = make_tiny_gpt2(tokenizer, seed=0, n_embd=16, n_layer=1)
    with torch.no_grad():
        for p in dpo.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dpo.save_pretrained(root / "dpo")
    score_model(tokenizer, seed=1).save_pretrained(root / "rm")
    score_model(tokenizer, seed=1, stats=None).save_pretrained(root / "rm_nostats")
    for name in ("sft", "dpo", "rm", "rm_nostats"):
        tokenizer.save_pretrained(root / name)
    write_jsonl(root / "sft.jsonl", sft_rows(32))
    write_jsonl(root / "pref.jsonl", preference_rows(32))
    write_jsonl(root / "prompts.jsonl", prompt_rows(16))
    return root


def stage_args(stage: str, world: Path, out: Path, *extra: str) -> list[str]:
    """Command-line arguments of a small run with checkpoints every 2 steps (6 steps; PPO: 5 iterations)
    that exercises every piece of resumable state: dropout RNG (sft), warmup + cosine schedules,
    gradient accumulation, Adam moments, PPO epochs with shuffling, the adaptive KL controller."""
    common = ["--output-dir", str(out), "--seed", "3", "--save-steps", "2", "--save-total-limit", "5",
              "--no-progress"]  # fmt: skip
    if stage == "ppo":
        args = ["ppo", "--policy", str(world / "sft"), "--dpo-model", str(world / "dpo"),
                "--reward-model", str(world / "rm"), "--prompts", str(world / "prompts.jsonl"),
                "--num-iterations", "5", "--rollout-batch-size", "4", "--mini-batch-size", "2",
                "--ppo-epochs", "2", "--max-new-tokens", "6", "--actor-lr", "1e-3", "--critic-lr", "1e-3",
                "--warmup-ratio", "0.2", "--adaptive-kl", "--kl-target", "0.5", "--kl-horizon", "100"]  # fmt: skip
    else:
        data = world / ("sft.jsonl" if stage == "sft" else "pref.jsonl")
        args = [stage, "--model", str(world / "sft"), "--data", str(data), "--max-steps", "6",
                "--per-device-batch-size", "2", "--gradient-accumulation-steps", "2", "--learning-rate", "1e-3",
                "--warmup-ratio", "0.2", "--max-length", "48"]  # fmt: skip
    return args + common + list(extra)


# ----------------------------------------------------------------------------- child processes

ZYGOTE = r"""
import json, os, select, sys, traceback
import torch
torch.set_num_threads(int(sys.argv[1]))
import rto.cli, rto.trainers.sft, rto.trainers.reward, rto.trainers.dpo, rto.trainers.ppo  # noqa: E401
children = {}

def reap(block=False):
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = children.pop(pid)
        with open(path + ".part", "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.replace(path + ".part", path)

print("ready", flush=True)
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.02)
    reap()
    if not ready:
        continue
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(req["env"])
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = rto.cli.main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    children[pid] = req["rc"]
    print(pid, flush=True)
reap(block=True)
"""


@dataclass
class Child:
    """A running `rto` command in a forked child: its pid, log and exit-status file."""

    pid: int
    log: Path
    rc_file: Path

    def returncode(self) -> int | None:
        return int(self.rc_file.read_text()) if self.rc_file.is_file() else None

    def wait(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.returncode()) is None:
            if time.monotonic() > deadline:
                self.kill(signal.SIGKILL)
                raise TimeoutError(f"child {self.pid} did not finish; log:\n{self.output()}")
            time.sleep(0.01)
        return rc

    def kill(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        return self.log.read_text() if self.log.is_file() else ""


class Zygote:
    def __init__(self, workdir: Path, threads: int = 1):
        self.workdir = workdir
        self.count = 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.count += 1
        log = self.workdir / f"child-{self.count}.log"
        rc = self.workdir / f"child-{self.count}.rc"
        req = {"argv": argv, "env": env or {}, "log": str(log), "rc": str(rc)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return Child(int(self.proc.stdout.readline()), log, rc)

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = self.spawn(argv, env)
        rc = child.wait()
        assert rc == 0, f"rto {argv[0]} failed with {rc}:\n{child.output()}"
        return child

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def pause_env(point: str, step: int, marker: Path) -> dict[str, str]:
    """Make the child wait at `point` of step `step` (see rto.trainers.signals.pause_point)."""
    return {"RTO_TEST_PAUSE": f"{point}:{step}", "RTO_TEST_PAUSE_FILE": str(marker)}


def wait_for_pause(child: Child, marker: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        rc = child.returncode()
        assert rc is None, f"child ended ({rc}) before reaching the pause point:\n{child.output()}"
        assert time.monotonic() < deadline, "pause point not reached"
        time.sleep(0.005)


def kill_at(zygote: Zygote, argv: list[str], point: str, step: int, sig=signal.SIGKILL) -> Child:
    """Run, wait until the child reaches `point` of `step`, send it `sig`, wait for it to end."""
    marker = zygote.workdir / f"pause-{zygote.count + 1}"
    child = zygote.spawn(argv, pause_env(point, step, marker))
    wait_for_pause(child, marker)
    child.kill(sig)
    child.wait()
    return child


# ----------------------------------------------------------------------------- comparing runs


def read_metrics(folder: Path) -> list[dict]:
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def weight_files(folder: Path) -> list[Path]:
    """The run's output weights (policy, critic, ...), not its checkpoints."""
    return sorted(p for p in Path(folder).rglob("*.safetensors") if "checkpoints" not in p.parts)


def assert_same_weights(a: Path, b: Path) -> None:
    """Bitwise-equal tensors in every safetensors file of two output folders (policy, critic, ...)."""
    fa, fb = weight_files(a), weight_files(b)
    assert [p.relative_to(a) for p in fa] == [p.relative_to(b) for p in fb] and fa
    for pa, pb in zip(fa, fb):
        ta, tb = load_file(pa), load_file(pb)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{pa.relative_to(a)}:{k} differs"


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights (bitwise) and the same metrics history (timing fields aside)."""
    assert_same_weights(a, b)
    ma, mb = without_timing(read_metrics(a)), without_timing(read_metrics(b))
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    assert ma == mb
