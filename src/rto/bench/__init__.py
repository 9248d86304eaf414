"""`rto bench`: what an RTO iteration costs next to a PPO iteration, and next to the bare compute.

The bench builds a small world offline (a BPE tokenizer trained on generated reviews; SFT, DPO and
reward-model folders of a GPT-2 preset with random weights; prompts of a fixed token length), sets up a
PPO run and an RTO run with the trainer's own ``setup_ppo`` and times the trainer's own ``ppo_iteration``
for both, held side by side in one process. Rounds alternate which mode goes first, so machine noise
(other jobs, thermal state, allocator warm-up) hits both alike.

Phases are timed through the iteration's observer seam: ``ppo_iteration`` names its phases (generation,
score and each scoring pass inside it, targets, train) and hands the scored batch to the observer, so the
breakdown is the trainer's and cannot drift from it; the bench still checks that every expected scoring
pass was seen. What the iteration does outside those phases (its metrics) shows as "other".

After every iteration the same shapes are pushed through bare calls -- one plain
``model.generate(do_sample=True)`` generating exactly as many tokens, plain no-grad forwards of every
scoring model, plain forward + backward + ``optimizer.step()`` of policy and critic -- and
"iteration / floor" is how much the trainer costs on top of the compute itself. Random weights mean
responses rarely end early: every row runs to ``max_new_tokens``, the worst case for the work per
iteration and the same work for both modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rto.bench.report import (
    MODES,
    SCORE_PASSES,
    TARGET_ITERATION_OVER_FLOOR,
    TARGET_RTO_OVER_PPO,
    format_table,
    target,
)
from rto.bench.trl import compare_trl
from rto.bench.world import build_world
from rto.errors import ConfigError, RtoError


@dataclass
class BenchConfig:
    """Time PPO and RTO iterations side by side, against the bare compute of the same shapes."""

    model_size: Literal["micro", "tiny", "small", "medium"] = "tiny"
    """GPT-2 preset of the sentiment world (rto.tasks.sentiment), the same for all five models (policy, reference, DPO, reward, critic): micro (64 wide, 2 layers), tiny (128, 4), small (256, 4), medium (384, 8); about 0.18M, 0.95M, 3.5M and 14.7M parameters at the corpus's vocabulary."""
    vocab_size: int = 2048
    """Upper bound of the BPE vocabulary trained on the fly; the generated review corpus runs out of merges at about 1.1k tokens, which is then the vocabulary."""
    rollout_batch_size: int = 32
    """Prompts per iteration (one response each)."""
    mini_batch_size: int = 16
    """Sequences per optimizer step."""
    max_new_tokens: int = 48
    """Response length in tokens (random weights rarely emit EOS, so responses run to this length)."""
    prompt_length: int = 16
    """Prompt length in tokens (prompts are cut from generated reviews to exactly this many tokens)."""
    ppo_epochs: int = 1
    """Passes over each rollout in the update."""
    iterations: int = 3
    """Measured iterations per mode."""
    warmup_iterations: int = 1
    """Unmeasured iterations per mode first (allocator, kernel and cache warm-up)."""
    statistic: Literal["min", "median", "mean"] = "min"
    """How the measured iterations of each phase are summarised. min (default): the cost with the least interference, since other work on a shared machine only ever adds time; median; or mean."""
    threads: int = 2
    """torch intra-op threads (0 keeps torch's default)."""
    seed: int = 0
    """Seed of the world (tokenizer corpus, weights, prompts) and of sampling."""
    engines: tuple[Literal["hf", "vllm"], ...] = ()
    """Also time rollout generation by each of these engines on the bench's shapes, same policy, prompts and seeds (e.g. --engines hf vllm; vllm needs the vllm package)."""
    compare: Literal["none", "trl"] = "none"
    """Also time TRL's experimental PPO trainer on the same world and shapes (needs trl <= 1.12 importable)."""
    estimators: str = ""
    """Instead of PPO vs RTO: time RTO iterations with each of these advantage estimators on the same shapes, comma-separated (e.g. 'gae,grpo,rloo')."""
    group_size: int = 4
    """With --estimators: responses per prompt of the group estimators, for rollout_batch_size / group_size prompts."""
    json_out: str | None = None
    """Write the full results as JSON to this file."""
    work_dir: str | None = None
    """Folder for the generated world (default: a temporary folder, removed afterwards)."""


def _ppo_config(cfg: BenchConfig, root: Path, mode: str):
    from rto.config import PPOConfig

    pc = PPOConfig(
        policy=str(root / "sft"), reward_model=str(root / "rm"), dpo_model=str(root / "dpo"),
        prompts=str(root / "prompts.jsonl"), output_dir=str(root / f"out_{mode}"), reward_mode=mode,
        rollout_batch_size=cfg.rollout_batch_size, mini_batch_size=cfg.mini_batch_size,
        max_new_tokens=cfg.max_new_tokens, max_prompt_length=cfg.prompt_length + 8, ppo_epochs=cfg.ppo_epochs,
        num_iterations=cfg.warmup_iterations + cfg.iterations, seed=cfg.seed, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    pc.validate()
    return pc


# ----------------------------------------------------------------------------- one trainer run per mode


@dataclass
class _Run:
    """One mode's trainer run (rto.trainers.ppo.PPORun) and what was measured on it."""

    mode: str
    run: Any  # PPORun
    records: list[dict[str, float]] = field(default_factory=list)
    peaks: list[dict[str, float]] = field(default_factory=list)

    @property
    def cfg(self):
        return self.run.cfg


class _Observer:
    """The iteration's observer: its phases go to the timer; the scored batch is kept for the floor."""

    def __init__(self, timer):
        self.timer = timer
        self.rollout = self.exp = None

    def phase(self, name: str):
        return self.timer.phase(name)

    def scored(self, rollout, exp, targets) -> None:
        self.rollout, self.exp = rollout, exp


@contextlib.contextmanager
def _count_tokenizer_calls(tok, counter: dict[str, int]):
    """Count encode/decode calls on the tokenizer's class while the hot path runs (there should be none)."""
    from rto.trainers.timing import patched

    names = [
        n for n in ("__call__", "encode", "decode", "batch_decode", "apply_chat_template") if hasattr(tok, n)
    ]
    cls = type(tok)
    with contextlib.ExitStack() as stack:
        for n in names:
            original = getattr(cls, n)

            def counting(*args, _original=original, _n=n, **kwargs):
                counter[_n] = counter.get(_n, 0) + 1
                return _original(*args, **kwargs)

            stack.enter_context(patched(cls, n, counting))
        yield


def _iteration(run: _Run, indices, it: int, timer, tok_calls: dict[str, int]) -> dict[str, Any]:
    """One iteration of the trainer (``ppo_iteration``), timed by phase."""
    from rto.trainers import ppo

    observer = _Observer(timer)
    with _count_tokenizer_calls(run.run.tokenizer, tok_calls), timer.phase("iteration"):
        ppo.ppo_iteration(
            run.run, it, indices, observer=observer
        )  # non-finite values raise (on_nonfinite=stop)
    roll, exp = observer.rollout, observer.exp
    scored = [exp.logps, exp.ref_logps, exp.values] + ([exp.dpo_logps] if exp.dpo_logps is not None else [])
    return {
        "roll": roll,
        "exp": exp,
        "response_tokens": int(exp.mask.sum()),
        "sequence_tokens": int(exp.attention_mask.sum()),
        "generated_steps": int(roll.response_ids.shape[1]),
        "longest_response": int(exp.mask.sum(1).max()),
        "inference_tensors": all(t.is_inference() for t in scored),
    }


# ----------------------------------------------------------------------------- the compute floor


@dataclass
class _Floor:
    """Copies of policy and critic with their own optimizers, for the bare training step."""

    policy: Any
    critic: Any
    opt: Any


def _make_floor(acc, pc) -> _Floor:
    from rto import models

    tok = models.load_tokenizer(pc.policy, padding_side="left")
    policy = models.load_causal_lm(pc.policy, tok).to(acc.device)
    critic = models.load_score_model(pc.reward_model, tok).to(acc.device)
    for m in (policy, critic):
        models.disable_dropout(m)  # the trainer runs without dropout: same work
    params = list(policy.parameters()) + list(critic.parameters())
    opt = torch.optim.AdamW(params, lr=1e-7, betas=(pc.adam_beta1, pc.adam_beta2), eps=pc.adam_eps)
    return _Floor(policy, critic, opt)


def _floor(fl: _Floor, run: _Run, out: dict[str, Any], timer) -> None:
    """The same shapes through bare Hugging Face / torch calls."""
    pc, s, roll, exp = run.cfg, run.run.scorers, out["roll"], out["exp"]
    tok = run.run.tokenizer
    steps = out["generated_steps"]
    policy = run.run.policy
    with timer.phase("floor.generation"):
        policy.generate(
            input_ids=roll.prompt_ids, attention_mask=roll.prompt_mask, do_sample=True, max_new_tokens=steps,
            min_new_tokens=steps, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, use_cache=True,
        )  # fmt: skip
    ids, attn = exp.input_ids.clone(), exp.attention_mask.clone()  # normal tensors: they enter autograd
    scorers = {
        "policy": policy,
        "ref": s.reference.model,
        "dpo": s.dpo.model if s.dpo is not None else None,
        "critic": run.run.critic,
        "rm": s.reward.model,
    }
    with torch.inference_mode():
        for name, model in scorers.items():
            if model is not None:
                with timer.phase(f"floor.{name}"):
                    model(input_ids=ids, attention_mask=attn)
    n, mb = ids.shape[0], pc.mini_batch_size
    fl.policy.train()
    fl.critic.train()
    with timer.phase("floor.train"):
        for _ in range(pc.ppo_epochs):
            for s in range(0, n, mb):
                i, a = ids[s : s + mb], attn[s : s + mb]
                fl.policy(input_ids=i, attention_mask=a, labels=i).loss.backward()
                zeros = torch.zeros(i.shape[0], device=i.device)
                fl.critic(input_ids=i, attention_mask=a, labels=zeros).loss.backward()
                fl.opt.step()
                fl.opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- summary


def _mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else 0.0


def _model_mb(run: _Run) -> float:
    r = run.run
    total = 0
    for m in (r.scorers.policy.model, r.scorers.critic.model, *(x.model for x in r.scorers.frozen_roles())):
        total += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    for opt in (r.actor_opt, r.critic_opt):
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


def write_json_out(json_out: str | None, result: dict) -> None:
    """Write the full results as JSON to ``--json-out`` (when given) and say where."""
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {path}")


def log_round(it: int, n_rounds: int, warmup: int, name: str, timer, extra: str = "") -> None:
    """One progress line on stderr per measured (or warm-up) iteration."""
    print(
        f"[rto bench] round {it + 1}/{n_rounds}{' (warm-up)' if it < warmup else ''} "
        f"{name}: iteration {timer.seconds['iteration']:.2f} s{extra}",
        file=sys.stderr,
        flush=True,
    )


def _statistic(xs: list[float], how: str) -> float:
    if how == "min":
        return float(min(xs))
    if how == "median":
        return float(statistics.median(xs))
    return float(statistics.fmean(xs))


def _derived(rec: dict[str, float], passes: list[str]) -> dict[str, float]:
    """Per-iteration columns computed before any averaging, so every statistic stays consistent."""
    score_parts = sum(rec[f"t.score.{p}"] for p in passes)
    top = rec["t.generation"] + rec["t.score"] + rec["t.targets"] + rec["t.train"]
    floor_score = sum(rec[f"t.floor.{p}"] for p in passes)
    return {
        **rec,
        "t.score.other": rec["t.score"] - score_parts,
        "t.other": rec["t.iteration"] - top,
        "t.floor.score": floor_score,
        "t.floor.total": rec["t.floor.generation"] + floor_score + rec["t.floor.train"],
        "c.floor.total": sum(v for k, v in rec.items() if k.startswith("c.floor.")),
    }


def summarize_mode(run: _Run, how: str = "min") -> dict[str, Any]:
    """Seconds per phase (the chosen statistic over the measured iterations), tokens/s, the compute
    floor and the ratios for one mode."""
    passes = [p for p in SCORE_PASSES if f"t.score.{p}" in run.records[0]]
    recs = [_derived(r, passes) for r in run.records]
    stat = {k: _statistic([r[k] for r in recs], how) for k in recs[0]}
    phases = {
        "generation": stat["t.generation"],
        "score": stat["t.score"],
        **{f"score.{p}": stat[f"t.score.{p}"] for p in passes},
        "score.other": stat["t.score.other"],
        "targets": stat["t.targets"],
        "train": stat["t.train"],
        "other": stat["t.other"],
    }
    iteration = stat["t.iteration"]
    floor = {
        "generation": stat["t.floor.generation"],
        **{f"score.{p}": stat[f"t.floor.{p}"] for p in passes},
        "score": stat["t.floor.score"],
        "train": stat["t.floor.train"],
        "total": stat["t.floor.total"],
    }
    resp, seq = stat["n.response_tokens"], stat["n.sequence_tokens"]
    tokens_per_s = {
        "iteration": resp / iteration,
        "generation": resp / phases["generation"],
        **{f"score.{p}": seq / phases[f"score.{p}"] for p in passes},
        "targets": resp / phases["targets"],
        "train": seq * run.cfg.ppo_epochs / phases["train"],
    }
    peak = {k: max(p[k] for p in run.peaks) for k in run.peaks[0]} if run.peaks else {}
    each = [r["t.iteration"] for r in recs]
    cpu = {"iteration": stat["c.iteration"], "floor": stat["c.floor.total"]}
    phase_sum = phases["generation"] + phases["score"] + phases["targets"] + phases["train"]
    floor_sum = floor["generation"] + floor["score"] + floor["train"]
    return {
        "iteration_s": iteration,
        "iteration_s_each": each,
        "floor_s_each": [r["t.floor.total"] for r in recs],
        "iteration_s_stdev": float(statistics.stdev(each)) if len(each) > 1 else 0.0,
        "phases_s": phases,
        "tokens_per_s": tokens_per_s,
        "floor_s": floor,
        "iteration_over_floor": iteration / floor["total"],
        # Sums of the per-phase statistics: with min, each phase gets its own least-disturbed sample,
        # which on a busy machine is steadier than the least-disturbed whole iteration.
        "phase_sum_s": phase_sum,
        "floor_phase_sum_s": floor_sum,
        # process CPU time (all threads): much less disturbed by other jobs than wall time
        "cpu_s": cpu,
        "iteration_over_floor_cpu": cpu["iteration"] / cpu["floor"],
        "phase_over_floor": {
            "generation": phases["generation"] / floor["generation"],
            "score": phases["score"] / floor["score"],
            "train": phases["train"] / floor["train"],
        },
        "response_tokens": resp,
        "sequence_tokens": seq,
        "generated_steps": stat["n.generated_steps"],
        "peak_memory_mb": peak,
        "model_and_optimizer_mb": _model_mb(run),
    }


def _machine(device) -> dict[str, Any]:
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------- the bench


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Build the world, time PPO and RTO iterations and their compute floor, print a table; returns
    the results (also written to ``cfg.json_out`` when set)."""
    from transformers.utils import logging as transformers_logging

    _validate(cfg)
    threads, verbosity = torch.get_num_threads(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # loading bars and init warnings would bury the table
    transformers_logging.set_verbosity_error()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg)
    finally:  # run_bench is also a library call: leave the process as it was
        torch.set_num_threads(threads)
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def _run_bench(cfg: BenchConfig) -> dict[str, Any]:
    from rto.trainers import ppo
    from rto.trainers.timing import PeakMemory, PhaseTimer

    load_start = _load()
    own_dir = cfg.work_dir is None
    root = Path(tempfile.mkdtemp(prefix="rto-bench-") if own_dir else cfg.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        world = build_world(cfg, root)
        if cfg.estimators:
            from rto.bench.estimators import estimator_bench

            return estimator_bench(cfg, root, world, load_start)
        runs = {m: _Run(m, ppo.setup_ppo(_ppo_config(cfg, root, m))) for m in MODES}
        acc = runs["ppo"].run.acc
        floor = _make_floor(acc, runs["ppo"].cfg)
        items = runs["ppo"].run.prompts
        setup_s = time.perf_counter() - t0
        _check_world(runs)

        memory = PeakMemory(acc.device)
        tok_calls: dict[str, int] = {}
        early_stop_ok = True
        inference_ok = True
        n_rounds = cfg.warmup_iterations + cfg.iterations
        B = cfg.rollout_batch_size
        for it in range(n_rounds):
            indices = [(it * B + j) % len(items) for j in range(B)]
            order = MODES if it % 2 == 0 else MODES[::-1]
            for mode in order:
                run = runs[mode]
                timer = PhaseTimer(acc.device)
                memory.reset()
                out = _iteration(run, indices, it, timer, tok_calls)
                peak = memory.read()
                _floor(floor, run, out, timer)
                early_stop_ok &= out["generated_steps"] == out["longest_response"]
                inference_ok &= out["inference_tensors"]
                if it == 0:
                    _check_instrumentation(run, timer)
                floor_s = sum(v for k, v in timer.seconds.items() if k.startswith("floor."))
                log_round(it, n_rounds, cfg.warmup_iterations, mode, timer, f", floor {floor_s:.2f} s")
                if it >= cfg.warmup_iterations:
                    rec = {f"t.{k}": v for k, v in timer.seconds.items()}
                    rec.update({f"c.{k}": v for k, v in timer.cpu_seconds.items()})
                    rec.update(
                        {f"n.{k}": out[k] for k in ("response_tokens", "sequence_tokens", "generated_steps")}
                    )
                    run.records.append(rec)
                    run.peaks.append(peak)
        modes = {m: summarize_mode(runs[m], cfg.statistic) for m in MODES}
        paired = [r / p for r, p in zip(modes["rto"]["iteration_s_each"], modes["ppo"]["iteration_s_each"])]
        rto_over_ppo = modes["rto"]["iteration_s"] / modes["ppo"]["iteration_s"]
        result: dict[str, Any] = {
            "config": asdict(cfg),
            "machine": {**_machine(acc.device), "load_avg_start": load_start, "load_avg_end": _load()},
            "model": {"size": cfg.model_size, "params": world["params"], "vocab": world["vocab"]},
            "shapes": {
                "batch": B,
                "prompt_tokens": cfg.prompt_length,
                "max_new_tokens": cfg.max_new_tokens,
                "mini_batch": cfg.mini_batch_size,
                "ppo_epochs": cfg.ppo_epochs,
            },
            "setup_s": setup_s,
            "modes": modes,
            "ratios": {
                "rto_over_ppo": rto_over_ppo,
                "ppo_iteration_over_floor": modes["ppo"]["iteration_over_floor"],
                "rto_iteration_over_floor": modes["rto"]["iteration_over_floor"],
            },
            # Per-round RTO/PPO quotients (the two iterations of a round run back to back): their spread
            # shows how much the machine's noise moves the ratio.
            "ratios_per_round": {"rto_over_ppo": paired},
            # RTO's intrinsic price: its extra scoring pass as a fraction of a PPO iteration
            "dpo_pass_over_ppo_iteration": modes["rto"]["phases_s"]["score.dpo"]
            / modes["ppo"]["iteration_s"],
            "ratios_from_phase_sums": {
                "rto_over_ppo": modes["rto"]["phase_sum_s"] / modes["ppo"]["phase_sum_s"],
                "ppo_iteration_over_floor": modes["ppo"]["phase_sum_s"] / modes["ppo"]["floor_phase_sum_s"],
                "rto_iteration_over_floor": modes["rto"]["phase_sum_s"] / modes["rto"]["floor_phase_sum_s"],
            },
            "ratios_cpu": {
                "rto_over_ppo": modes["rto"]["cpu_s"]["iteration"] / modes["ppo"]["cpu_s"]["iteration"],
                "ppo_iteration_over_floor": modes["ppo"]["iteration_over_floor_cpu"],
                "rto_iteration_over_floor": modes["rto"]["iteration_over_floor_cpu"],
            },
            "targets": [
                target("RTO iteration / PPO iteration", rto_over_ppo, TARGET_RTO_OVER_PPO),
                target(
                    "PPO iteration / compute floor",
                    modes["ppo"]["iteration_over_floor"],
                    TARGET_ITERATION_OVER_FLOOR,
                ),
                target(
                    "RTO iteration / compute floor",
                    modes["rto"]["iteration_over_floor"],
                    TARGET_ITERATION_OVER_FLOOR,
                ),
            ],
            "checks": {
                "generation_stops_when_all_ended": early_stop_ok,
                "scoring_under_inference_mode": inference_ok,
                "tokenizer_calls_in_hot_path": sum(tok_calls.values()),
            },
        }
        if cfg.compare == "trl":
            result["compare"] = {"trl": compare_trl(cfg, root, items, modes["ppo"]["iteration_s"])}
        if cfg.engines:
            from rto.bench.engines import compare_engines

            load_before = _load()
            result["engines"] = compare_engines(
                list(dict.fromkeys(cfg.engines)), root / "sft", items, rollout_batch_size=B,
                max_new_tokens=cfg.max_new_tokens, warmup_iterations=cfg.warmup_iterations,
                iterations=cfg.iterations, statistic=cfg.statistic, seed=cfg.seed,
            )  # fmt: skip
            result["engines_load_avg"] = {"start": load_before, "end": _load()}
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    print(format_table(result))
    write_json_out(cfg.json_out, result)
    return result


def _validate(cfg: BenchConfig) -> None:
    for name in ("rollout_batch_size", "mini_batch_size", "max_new_tokens", "prompt_length", "iterations",
                 "ppo_epochs", "vocab_size"):  # fmt: skip
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"field '{name}' must be > 0, got {getattr(cfg, name)}")
    if cfg.estimators:
        from rto.bench.estimators import parse_estimators

        parse_estimators(cfg.estimators)
        if cfg.group_size < 2:
            raise ConfigError(f"field 'group_size' must be >= 2, got {cfg.group_size}")
    if cfg.warmup_iterations < 0 or cfg.threads < 0:
        raise ConfigError("fields 'warmup_iterations' and 'threads' must be >= 0")
    if cfg.rollout_batch_size % cfg.mini_batch_size:
        raise ConfigError(
            f"field 'rollout_batch_size' ({cfg.rollout_batch_size}) must be a multiple of "
            f"'mini_batch_size' ({cfg.mini_batch_size})"
        )


def _check_world(runs: dict[str, _Run]) -> None:
    for mode, run in runs.items():
        s = run.run.scorers
        if s.critic is None or s.reward is None or s.reward.kind != "model":
            raise RtoError(f"bench: the {mode} run did not get a critic and a same-tokenizer reward model")
        if (s.dpo is None) != (mode == "ppo"):
            raise RtoError(f"bench: the {mode} run has the wrong set of models")


def _check_instrumentation(run: _Run, timer) -> None:
    """Every scoring pass must have been timed once: otherwise the iteration stopped naming one."""
    expected = [p for p in SCORE_PASSES if p != "dpo" or run.mode != "ppo"]
    missing = [p for p in expected if timer.calls.get(f"score.{p}") != 1]
    if missing:
        raise RtoError(
            f"bench: could not time the {', '.join(missing)} pass(es) of score_rollout ({run.mode}): "
            "each scoring pass of ppo_iteration must run under its observer phase 'score.<pass>'"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m rto.bench``: the same as ``rto bench``."""
    from rto.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["BenchConfig", "build_world", "format_table", "run_bench", "summarize_mode"]
