"""The report's PNG plots (matplotlib, Agg backend: no display needed). Each function takes plain data
and a path, draws one figure and closes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"sft": "#9a9a9a", "dpo": "#2a9d8f", "ppo": "#e76f51", "rto": "#264653", "best-of-n": "#e9c46a"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(name: str) -> str:
    key = "best-of-n" if name.startswith("best-of") else name
    return COLORS.get(key, "#8a5a9e")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return path


def curves_vs_iteration(curves: dict, refs: dict[str, float], path: Path) -> Path:
    """Rollout gold reward, normalised RM score and KL per PPO iteration: mean over seeds and the min-max
    band, one colour per method. ``refs`` draws horizontal lines (evaluation gold of SFT, DPO, ...)."""
    plt = _plt()
    panels = [
        ("gold", "gold reward of rollout samples"),
        ("rm", "RM score (normalised)"),
        ("kl", "KL to reference"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels):
        for method, c in curves.items():
            x = np.asarray(c["iterations"])
            ys = np.asarray(c[key + "_per_seed"], dtype=float)
            n = len(ys)
            ax.plot(
                x,
                ys.mean(0),
                color=_color(method),
                label=f"{method.upper()} ({'mean of ' if n > 1 else ''}{n} seed{'s' if n > 1 else ''})",
            )
            if len(ys) > 1:
                ax.fill_between(x, ys.min(0), ys.max(0), color=_color(method), alpha=0.2, linewidth=0)
        if key == "gold":
            # distinct dash patterns and the values in the legend: equal references stay visible
            styles = [(0, (6, 3)), (0, (1, 2)), (0, (4, 2, 1, 2)), (0, (8, 2, 1, 2, 1, 2))]
            for i, (name, v) in enumerate(refs.items()):
                ax.axhline(v, color=_color(name), linestyle=styles[i % len(styles)], linewidth=1.4,
                           label=f"{name} (eval, {v:+.3f})")  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("PPO vs RTO during training (band: min-max over seeds)", fontsize=10)
    return _save(fig, path)


def frontier(curves: dict, points: list[dict], path: Path) -> Path:
    """Gold reward against KL to the reference: faint per-iteration rollout traces (per seed) and the
    evaluated policies as large markers (best-of-N at its analytic KL)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, c in curves.items():
        for s, (kl, g) in enumerate(zip(c["kl_per_seed"], c["gold_per_seed"])):
            ax.plot(kl, g, "-", color=_color(method), alpha=0.35, linewidth=1,
                    label=f"{method.upper()} rollouts (per iteration)" if s == 0 else None)  # fmt: skip
    seen = set()
    for p in points:
        group = p["group"]
        marker = {"sft": "o", "dpo": "s", "ppo": "^", "rto": "v"}.get(group, "*")
        label = None if group in seen else p["label"]
        seen.add(group)
        ax.errorbar(p["kl"], p["gold"], yerr=[[p["gold"] - p["gold_ci"][0]], [p["gold_ci"][1] - p["gold"]]],
                    fmt=marker, color=_color(group), markersize=9, markeredgecolor="black", capsize=3,
                    label=label)  # fmt: skip
    ax.set_xlabel("KL(policy || SFT) per sequence (nats, sampled)")
    ax.set_ylabel("gold reward")
    ax.set_title("Gold reward vs KL to the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def dpo_reward_histogram(chosen: list[float], rejected: list[float], path: Path) -> Path:
    """Summed DPO token rewards of chosen vs rejected responses of held-out pairs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    both = np.concatenate([chosen, rejected]) if len(chosen) + len(rejected) else np.zeros(1)
    lo, hi = np.quantile(both, [0.01, 0.99]) if both.size > 1 else (both.min() - 1, both.max() + 1)
    bins = np.linspace(lo - 1e-6, hi + 1e-6, 30)
    ax.hist(
        np.clip(chosen, lo, hi), bins=bins, alpha=0.55, color="#2a9d8f", label=f"chosen (n={len(chosen)})"
    )
    ax.hist(
        np.clip(rejected, lo, hi),
        bins=bins,
        alpha=0.55,
        color="#e76f51",
        label=f"rejected (n={len(rejected)})",
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("sum over response tokens of beta * (log pi_dpo - log pi_ref)")
    ax.set_ylabel("pairs")
    ax.set_title("DPO token rewards on held-out preference pairs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def length_distributions(lengths: dict[str, list[float]], path: Path, cap: int | None = None) -> Path:
    """Response length (tokens) per method on the held-out prompts, as step histograms; ``cap`` (the
    max_new_tokens of the evaluation) is marked: responses there were cut, not ended."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    top = max((max(v) for v in lengths.values() if len(v)), default=1)
    bins = np.arange(0, top + 2) - 0.5
    for name, v in lengths.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.6, density=True, color=_color(name),
                label=f"{name} (mean {np.mean(v):.1f})")  # fmt: skip
    if cap:
        ax.axvline(
            cap, color="black", linestyle=":", linewidth=1.2, label=f"length cap (max_new_tokens = {cap})"
        )
    ax.set_xlabel("response length (tokens, EOS excluded)")
    ax.set_ylabel("share of responses")
    ax.set_title("Response lengths on held-out prompts")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def token_rewards(examples: list[dict], path: Path, width_chars: int = 80) -> Path:
    """Each example's response tokens coloured by their DPO token reward (red negative, blue positive,
    symmetric scale shared by all rows). Monospace text so token boxes can be placed by character count."""
    plt = _plt()
    from matplotlib import cm, colors

    vmax = max((abs(r) for e in examples for r in e["rewards"]), default=1.0) or 1.0
    norm = colors.TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    cmap = cm.get_cmap("RdBu") if hasattr(cm, "get_cmap") else plt.get_cmap("RdBu")
    lines: list[list[tuple[str, float | None]]] = []
    for e in examples:
        lines.append(
            [(f"[{e['label']}, gold {e['gold']:+.2f}, DPO sum {sum(e['rewards']):+.2f}] {e['prompt']}", None)]
        )
        row: list[tuple[str, float | None]] = []
        used = 0
        for t, r in zip(e["tokens"], e["rewards"]):
            t = t.replace("\n", "\\n") or " "
            if used + len(t) > width_chars and row:
                lines.append(row)
                row, used = [], 0
            row.append((t, r))
            used += len(t)
        lines.append(row)
        lines.append([])
    fig_w = width_chars * 0.085 + 0.6
    line_h = 1.0 / max(len(lines), 1)
    fig = plt.figure(figsize=(fig_w, 0.26 * len(lines) + 0.6))
    ax = fig.add_axes([0.01, 0.08, 0.98, 0.9])
    ax.set_axis_off()
    probe = ax.text(0, 0, "x" * 40, family="monospace", fontsize=9)  # measure one character's advance
    renderer = fig.canvas.get_renderer()
    char_w = probe.get_window_extent(renderer).width / 40 / ax.get_window_extent(renderer).width
    probe.remove()
    for li, row in enumerate(lines):
        y = 1 - (li + 0.5) * line_h
        x = 0.0
        for t, r in row:
            if r is None:
                ax.text(x, y, t, family="monospace", fontsize=8, va="center", style="italic", color="#333333")
                continue
            ax.text(x, y, t, family="monospace", fontsize=9, va="center",
                    bbox=dict(boxstyle="square,pad=0.08", facecolor=cmap(norm(r)), edgecolor="none"))  # fmt: skip
            x += len(t) * char_w
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    cax = fig.add_axes([0.3, 0.02, 0.4, 0.025])
    fig.colorbar(sm, cax=cax, orientation="horizontal", label="beta * (log pi_dpo - log pi_ref) per token")
    return _save(fig, path)
