"""`rto bench --estimators ...`: what an iteration costs with each advantage estimator, on the same shapes.

Every estimator runs RTO (reward mode ``rto``) on the bench's world through the trainer's own
``setup_ppo`` and ``ppo_iteration``, timed through the iteration's observer phases. The shapes are the
same for all: ``rollout_batch_size`` responses per iteration, of ``max_new_tokens`` tokens (random
weights rarely emit EOS). The group estimators sample ``group_size`` responses for
``rollout_batch_size / group_size`` prompts; GAE and REINFORCE++ one response for each of
``rollout_batch_size`` prompts (all prompts have the same length). Rounds rotate which estimator goes
first, so machine noise hits all alike; each phase is summarised by the bench's statistic (min by
default). GAE pays for a critic (a scoring pass, a forward and backward per update, its optimizer);
the others do not, and differ only in the cost of their advantage arithmetic ("targets").
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rto.errors import ConfigError

PHASES = ("generation", "score", "targets", "train")


def parse_estimators(names: str) -> list[str]:
    from rto.algorithms.estimators import ESTIMATORS

    out = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in out if n not in ESTIMATORS]
    if unknown or not out:
        raise ConfigError(
            f"field 'estimators': unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
            f"choose from {', '.join(ESTIMATORS)}"
        )
    return out


def _config(cfg, root: Path, name: str):
    from rto.algorithms.estimators import ESTIMATORS
    from rto.bench import _ppo_config

    pc = dataclasses.replace(
        _ppo_config(cfg, root, "rto"), output_dir=str(root / f"out_est_{name}"), advantage=name
    )
    if ESTIMATORS[name].needs_groups:
        if cfg.rollout_batch_size % cfg.group_size:
            raise ConfigError(
                f"field 'rollout_batch_size' ({cfg.rollout_batch_size}) must be a multiple of 'group_size' "
                f"({cfg.group_size})"
            )
        pc = dataclasses.replace(
            pc,
            num_samples_per_prompt=cfg.group_size,
            rollout_batch_size=cfg.rollout_batch_size // cfg.group_size,
        )
    pc.validate()
    return pc


def run_estimators(cfg, root: Path) -> dict[str, Any]:
    """Time ``cfg.estimators`` side by side on the world under ``root``; returns per-estimator seconds."""
    import statistics

    from rto.bench import _Observer, _statistic, log_round
    from rto.trainers import ppo
    from rto.trainers.timing import PhaseTimer

    names = parse_estimators(cfg.estimators)
    runs = {n: ppo.setup_ppo(_config(cfg, root, n)) for n in names}
    device = next(iter(runs.values())).acc.device
    n_prompts = len(next(iter(runs.values())).prompts)
    records: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    responses: dict[str, int] = {}
    n_rounds = cfg.warmup_iterations + cfg.iterations
    for it in range(n_rounds):
        order = names[it % len(names) :] + names[: it % len(names)]
        for name in order:
            run = runs[name]
            B = run.cfg.rollout_batch_size
            indices = [(it * cfg.rollout_batch_size + j) % n_prompts for j in range(B)]
            timer = PhaseTimer(device)
            observer = _Observer(timer)
            with timer.phase("iteration"):
                ppo.ppo_iteration(run, it, indices, observer=observer)
            responses[name] = int(observer.exp.mask.shape[0])
            log_round(it, n_rounds, cfg.warmup_iterations, name, timer)
            if it >= cfg.warmup_iterations:
                records[name].append({**timer.seconds, "cpu": timer.cpu_seconds["iteration"]})
    out: dict[str, Any] = {}
    for name in names:
        recs = records[name]
        out[name] = {
            "iteration_s": _statistic([r["iteration"] for r in recs], cfg.statistic),
            "iteration_s_each": [r["iteration"] for r in recs],
            # process CPU seconds (all threads): much less disturbed by other jobs than wall time
            "iteration_cpu_s": _statistic([r["cpu"] for r in recs], cfg.statistic),
            "phases_s": {p: _statistic([r.get(p, 0.0) for r in recs], cfg.statistic) for p in PHASES},
            "responses_per_iteration": responses[name],
            "prompts_per_iteration": runs[name].cfg.rollout_batch_size,
            "critic": runs[name].critic is not None,
        }
    if "gae" in out:
        base = out["gae"]["iteration_s"]
        for name in names:
            out[name]["over_gae"] = out[name]["iteration_s"] / base
            out[name]["over_gae_cpu"] = out[name]["iteration_cpu_s"] / out["gae"]["iteration_cpu_s"]
            out[name]["over_gae_per_round"] = [
                a / b for a, b in zip(out[name]["iteration_s_each"], out["gae"]["iteration_s_each"])
            ]
            out[name]["over_gae_stdev"] = (
                statistics.stdev(out[name]["over_gae_per_round"])
                if len(out[name]["over_gae_per_round"]) > 1
                else 0.0
            )
    for run in runs.values():
        run.engine.close()
    return out


def format_estimators(result: dict[str, Any]) -> str:
    est = result["estimators"]
    sh = result["shapes"]
    lines = [
        f"rto bench --estimators: RTO rewards, {sh['batch']} responses per iteration of {sh['max_new_tokens']} "
        f"tokens (group estimators: {result['config']['group_size']} per prompt), mini-batch {sh['mini_batch']}; "
        f"{result['config']['iterations']} measured iteration(s) each, statistic {result['config']['statistic']}; "
        f"load avg {result['machine']['load_avg_start']} -> {result['machine']['load_avg_end']}",
        "",
        f"{'estimator':<22}{'critic':>7}{'prompts':>8}{'iter s':>9}{'gen s':>8}{'score s':>9}{'targets s':>11}"
        f"{'train s':>9}{'/ gae':>8}{'cpu s':>8}{'/ gae':>7}",
    ]
    for name, e in est.items():
        ph = e["phases_s"]
        ratio = f"{e['over_gae']:.2f}" if "over_gae" in e else "-"
        ratio_cpu = f"{e['over_gae_cpu']:.2f}" if "over_gae_cpu" in e else "-"
        lines.append(
            f"{name:<22}{'yes' if e['critic'] else 'no':>7}{e['prompts_per_iteration']:>8}{e['iteration_s']:>9.3f}"
            f"{ph['generation']:>8.3f}{ph['score']:>9.3f}{ph['targets']:>11.4f}{ph['train']:>9.3f}{ratio:>8}"
            f"{e['iteration_cpu_s']:>8.2f}{ratio_cpu:>7}"
        )
    return "\n".join(lines)


def estimator_bench(cfg, root: Path, world: dict, load_start: list[float]) -> dict[str, Any]:
    """The --estimators bench on the built world: run, print the table, write the JSON; returns the result."""
    import accelerate

    from rto.bench import _load, _machine, write_json_out

    estimators = run_estimators(cfg, root)

    result = {
        "config": asdict(cfg),
        "machine": {
            **_machine(accelerate.PartialState().device),
            "load_avg_start": load_start,
            "load_avg_end": _load(),
        },
        "model": {"size": cfg.model_size, "params": world["params"], "vocab": world["vocab"]},
        "shapes": {
            "batch": cfg.rollout_batch_size,
            "prompt_tokens": cfg.prompt_length,
            "max_new_tokens": cfg.max_new_tokens,
            "mini_batch": cfg.mini_batch_size,
            "ppo_epochs": cfg.ppo_epochs,
        },
        "estimators": estimators,
    }
    print(format_estimators(result))
    write_json_out(cfg.json_out, result)
    return result
