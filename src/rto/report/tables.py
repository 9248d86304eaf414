"""Markdown and plain-text tables of the report dict (``rto.report.build_report``)."""

from __future__ import annotations


def fmt(v: float, spec: str) -> str:
    """``format(v, spec)`` without a negative zero: -0.0004 at 3 decimals is 0.000 (or +0.000), not -0.000."""
    s = format(v, spec)
    if s.startswith("-") and not s.strip("-+0.%"):
        s = format(0.0, spec)
    return s


def ci_text(v: list[float] | None, spec: str = "+.3f") -> str:
    return "" if not v else f"[{fmt(v[0], spec)}, {fmt(v[1], spec)}]"


def _num(v, spec: str) -> str:
    return "n/a" if v is None else fmt(v, spec)


RESULT_COLUMNS = (
    "method", "gold reward [95% CI]", "win rate vs SFT [95% CI]", "KL to SFT (sampled)", "RM score (norm.)",
    "length (tokens)", "EOS rate", "distinct-1", "distinct-2",
)  # fmt: skip


def results_markdown(results: dict) -> str:
    """The results table: one row per method (PPO/RTO: over seeds)."""
    lines = ["| " + " | ".join(RESULT_COLUMNS) + " |", "|" + "---|" * len(RESULT_COLUMNS)]
    for r in results.values():
        kl = _num(r["kl_mean"], ".2f") + (" (analytic)" if r.get("kl_is_analytic") else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    f"{fmt(r['gold_mean'], '+.3f')} {ci_text(r['gold_ci'])}",
                    f"{r['win_rate']:.3f} {ci_text(r.get('win_rate_ci'), '.3f')}",
                    kl,
                    _num(r.get("rm_score_normalized_mean"), "+.2f"),
                    f"{r['length_mean']:.1f}",
                    f"{r['eos_rate']:.2f}",
                    _num(r.get("distinct_1"), ".3f"),
                    _num(r.get("distinct_2"), ".3f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def seeds_markdown(per_seed: dict) -> str:
    """Per-seed gold, win rate and KL of each RL run."""
    lines = [
        "| run | gold reward [95% CI over prompts] | win rate vs SFT | KL to SFT | RM score (norm.) | length |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in per_seed.items():
        lines.append(
            f"| {name} | {fmt(r['gold_mean'], '+.3f')} {ci_text(r['gold_ci'])} | {r['win_rate']:.3f} | "
            f"{fmt(r['kl_mean'], '.2f')} | "
            f"{_num(r.get('rm_score_normalized_mean'), '+.2f')} | {r['length_mean']:.1f} |"
        )
    return "\n".join(lines)


def comparisons_markdown(comparisons: dict) -> str:
    lines = ["| comparison (gold) | difference [95% CI] | reading |", "|---|---|---|"]
    for key, c in comparisons.items():
        lines.append(f"| {key} | {fmt(c['diff'], '+.3f')} {ci_text(c['ci'])} | {c['verdict']} |")
    return "\n".join(lines)


def timings_markdown(timings: dict[str, float], cpu: dict[str, float] | None = None) -> str:
    cpu = cpu or {}
    lines = ["| stage | wall seconds | CPU seconds |", "|---|---|---|"]
    for k, v in timings.items():
        lines.append(f"| {k} | {v:.1f} | {_num(cpu.get(k), '.1f')} |")
    return "\n".join(lines)


def summary_text(report: dict) -> str:
    """The short console summary printed at the end of `rto demo`."""
    res = report["results"]
    w = max(len(r["label"]) for r in res.values())
    head = f"{'method':<{w}}  {'gold [95% CI]':<25} {'win vs SFT':>10} {'KL':>7} {'RM(norm)':>9} {'len':>6}"
    lines = [head, "-" * len(head)]
    for r in res.values():
        lines.append(
            f"{r['label']:<{w}}  {fmt(r['gold_mean'], '+.3f')} {ci_text(r['gold_ci']):<18} {r['win_rate']:>10.3f} "
            f"{fmt(r['kl_mean'], '.2f'):>7} {_num(r.get('rm_score_normalized_mean'), '+.2f'):>9} {r['length_mean']:>6.1f}"
        )
    lines.append("")
    lines.append(report["verdict_sentence"])
    return "\n".join(lines)
