"""What `rto bench` reports: the modes and scoring passes it times, its targets, and the plain-text table."""

from __future__ import annotations

import math
from typing import Any

MODES = ("ppo", "rto")
TARGET_RTO_OVER_PPO = 1.10
TARGET_ITERATION_OVER_FLOOR = 1.15
SCORE_PASSES = ("policy", "ref", "dpo", "critic", "rm")


def target(name: str, value: float, limit: float) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "met": value <= limit,
        "over_by_pct": max(0.0, (value / limit - 1.0) * 100.0),
    }


def _fmt(x: float, unit: str = "") -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3f}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """A plain-text report: per-phase seconds and tokens/s per mode, the floor, ratios and targets."""
    modes = result["modes"]
    m = result["model"]
    sh = result["shapes"]
    lines = [
        f"rto bench: GPT-2 '{m['size']}' ({m['params'] / 1e6:.2f}M params, vocab {m['vocab']}), batch {sh['batch']}, "
        f"prompt {sh['prompt_tokens']} + response {sh['max_new_tokens']} tokens, mini-batch {sh['mini_batch']}, "
        f"{sh['ppo_epochs']} epoch(s); device {result['machine']['device']}, "
        f"{result['machine']['torch_threads']} threads; {result['config']['iterations']} measured iteration(s) "
        f"per mode; load avg {result['machine']['load_avg_start']} -> {result['machine']['load_avg_end']}",
        "",
        f"{'phase':<16}{'ppo s':>9}{'rto s':>9}{'ppo tok/s':>11}{'rto tok/s':>11}{'floor ppo':>11}{'floor rto':>11}",
    ]
    names = [
        "generation",
        "score",
        *(f"score.{p}" for p in SCORE_PASSES),
        "score.other",
        "targets",
        "train",
        "other",
    ]
    for name in ["iteration", *names]:
        row = f"{name:<16}"
        for mode in MODES:
            v = modes[mode]["iteration_s"] if name == "iteration" else modes[mode]["phases_s"].get(name)
            row += f"{_fmt(v) if v is not None else '-':>9}"
        for mode in MODES:
            v = modes[mode]["tokens_per_s"].get(name)
            row += f"{_fmt(v) if v is not None else '':>11}"
        for mode in MODES:
            key = "total" if name == "iteration" else name
            v = modes[mode]["floor_s"].get(key)
            row += f"{_fmt(v) if v is not None else '':>11}"
        lines.append(row)
    lines.append("")
    for mode in MODES:
        pf = modes[mode]["phase_over_floor"]
        mem = modes[mode]["peak_memory_mb"]
        mem_txt = ", ".join(f"{k.replace('_mb', '')} {v:.0f} MB" for k, v in mem.items() if k.endswith("_mb"))
        lines.append(
            f"{mode}: iteration / floor {modes[mode]['iteration_over_floor']:.3f} (generation {pf['generation']:.3f}, "
            f"scoring {pf['score']:.3f}, training {pf['train']:.3f}); peak {mem_txt}; "
            f"models + optimizer states {modes[mode]['model_and_optimizer_mb']:.0f} MB"
        )
    lines.append("")
    for t in result["targets"]:
        verdict = "met" if t["met"] else f"NOT met, over by {t['over_by_pct']:.1f}%"
        lines.append(f"{t['name']:<32} {t['value']:.3f}  (target <= {t['limit']:.2f})  {verdict}")
    rs = result["ratios_from_phase_sums"]
    lines.append(
        f"the DPO scoring pass = {100 * result['dpo_pass_over_ppo_iteration']:.1f}% of a PPO iteration"
    )
    lines.append(
        f"from sums of per-phase {result['config']['statistic']}s: RTO/PPO {rs['rto_over_ppo']:.3f}, "
        f"PPO/floor {rs['ppo_iteration_over_floor']:.3f}, RTO/floor {rs['rto_iteration_over_floor']:.3f}"
    )
    rc = result["ratios_cpu"]
    lines.append(
        f"same ratios in process CPU time (less disturbed by other jobs): RTO/PPO {rc['rto_over_ppo']:.3f}, "
        f"PPO/floor {rc['ppo_iteration_over_floor']:.3f}, RTO/floor {rc['rto_iteration_over_floor']:.3f}"
    )
    ck = result["checks"]
    lines.append(
        f"checks: generation stops when every row ended: {ck['generation_stops_when_all_ended']}; scoring under "
        f"inference mode: {ck['scoring_under_inference_mode']}; tokenizer calls in the hot path: "
        f"{ck['tokenizer_calls_in_hot_path']}"
    )
    if "engines" in result:
        from rto.bench.engines import format_engines

        load = result["engines_load_avg"]
        lines += format_engines(result["engines"]) + [f"  load avg {load['start']} -> {load['end']}"]
    trl_res = result.get("compare", {}).get("trl")
    if trl_res is not None:
        if "skipped" in trl_res:
            lines.append(trl_res["skipped"])
        else:
            lines.append(
                f"trl {trl_res['trl_version']} PPO: {trl_res['trl_iteration_s']:.3f} s/iteration; rto ppo / trl = "
                f"{trl_res['rto_ppo_over_trl']:.3f}"
            )
    return "\n".join(lines)
