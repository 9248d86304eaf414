"""PNG plots and summary.md of an experiment's results.json."""

from __future__ import annotations

from pathlib import Path


def _fmt(m: dict, key: str, digits: int = 3) -> str:
    v = m.get(key)
    if not v:
        return "-"
    lo, hi = v["ci"]
    return f"{v['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def method_table(methods: dict) -> list[str]:
    rows = [
        "| method | seeds | gold [95% CI] | win vs SFT [95% CI] | KL to SFT [95% CI] | length | s/iter (gen/score/train) | CPU s/run | passes/iter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        t = m.get("time_per_iteration")
        secs = f"{t['total']:.2f} ({t['generate']:.2f}/{t['score']:.2f}/{t['train']:.2f})" if t else "offline"
        pp = m.get("passes_per_iteration")
        passes = (
            f"{pp['forward_equivalents']} fwd-eq ({pp['scoring_forwards_total']} score + "
            f"{pp['train_forwards']} fwd/{pp['train_backwards']} bwd) + {pp['generation_token_forwards']} gen steps"
            if pp
            else "-"
        )
        m = {"cpu_s_per_run": float("nan"), **m}
        seeds = f"{m['n_seeds']}" + (" (one seed)" if m["single_seed"] else "")
        rows.append(
            f"| {name} | {seeds} | {_fmt(m, 'gold')} | {_fmt(m, 'win')} | {_fmt(m, 'kl', 2)} | "
            f"{m['length']['mean']:.1f} | {secs} | {m['cpu_s_per_run']:.0f} | {passes} |"
        )
    return rows


def _gold_line(results: dict) -> str:
    g = results.get("world", {}).get("gold_reward", "vader")
    if g == "vader":
        return "Gold = VADER sentiment x well-formedness of held-out samples (rto.eval). "
    return f"Gold = the gold reward '{g}' on held-out samples (rto.eval). "


def write_summary(results: dict, path: Path) -> None:
    lines = [
        f"# rto experiment {results['experiment']} (preset {results['preset']})",
        "",
        f"Runtime of this invocation {results['runtime_s'] / 60:.1f} min; {results['n_cells']} cells, together "
        f"{results['cells_wall_s'] / 60:.1f} min wall and {results['cells_cpu_s'] / 60:.1f} min CPU (world "
        f"stages not included). {results['ci']}. "
        + _gold_line(results)
        + "'one seed' marks numbers whose interval covers prompt noise only. A claim 'holds' when the 95% "
        "interval of the gold difference is on its side of zero, is 'not shown' when the interval contains "
        "zero, and 'does not hold' when it is on the other side."
        + (
            " Reward and DPO models of each fraction trained for the same number of optimizer steps as on "
            "all pairs (--pref-budget steps)."
            if results.get("config", {}).get("pref_budget") == "steps"
            and results["experiment"] == "data-scaling"
            else ""
        ),
        "",
        *method_table(results["methods"]),
        "",
        "## Claims",
        "",
    ]
    for c in results["claims"]:
        lo, hi = c["ci"]
        verdict = {"holds": "holds", "contradicted": "does not hold", "not shown": "not shown"}[c["status"]]
        one = " (one seed)" if c["single_seed"] else ""
        lines.append(
            f"- {c['claim']}: **{verdict}** here{one}. gold({c['a']}) - gold({c['b']}) = {c['diff']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] ({c['verdict']})."
        )
    if results["experiment"] == "sweep":
        grid = {k: m for k, m in results["methods"].items() if "beta1" in m}
        order = sorted(grid, key=lambda k: grid[k]["gold"]["mean"])
        if order:
            lines.append(
                f"- sensitivity: final gold ranges from {grid[order[0]]['gold']['mean']:.3f} ({order[0]}) to "
                f"{grid[order[-1]]['gold']['mean']:.3f} ({order[-1]}) over {len(order)} settings."
            )
    if not results["claims"] and results["experiment"] != "sweep":
        lines.append("- (no claim applies at this grid)")
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in results.get("plots", [])]
    path.write_text("\n".join(lines) + "\n")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(m: dict, key: str = "gold") -> tuple[float, float, float]:
    v = m[key]
    return v["mean"], v["mean"] - v["ci"][0], v["ci"][1] - v["mean"]


def write_plots(name: str, results: dict, folder: Path) -> list[str]:
    """Returns the plot paths relative to the experiment folder."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    methods = results["methods"]
    made: list[str] = []

    def save(fig, stem: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / f"{stem}.png", dpi=110)
        plt.close(fig)
        made.append(f"plots/{stem}.png")

    sft = methods.get("SFT", {}).get("gold", {}).get("mean")
    if name == "data-scaling":
        fig, ax = plt.subplots(figsize=(6, 4))
        for meth, color, shift in (("PPO", "tab:blue", 0.97), ("RTO", "tab:red", 1.03)):
            # shifted apart a little on the x axis so that equal values stay visible
            pts = sorted(
                (m["n_pairs"] * shift, *_err(m)) for m in methods.values() if m.get("method") == meth
            )
            if pts:
                x, y, lo, hi = zip(*pts)
                ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=meth, color=color)
        if sft is not None:
            ax.axhline(sft, color="gray", ls="--", label="SFT")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("preference pairs (RM and DPO trained on these only)")
        ax.set_ylabel("final gold reward (held-out, 95% CI)")
        ax.legend()
        save(fig, "gold_vs_data")
    elif name == "sweep":
        import numpy as np

        grid = [m for m in methods.values() if "beta1" in m and m.get("dpo_reward_clip") is None]
        center = next((m for m in grid if m.get("is_default")), None)
        for a, b in (("beta1", "beta2"), ("beta1", "beta3"), ("beta2", "beta3")):
            if center is None:
                break
            c = next(x for x in ("beta1", "beta2", "beta3") if x not in (a, b))
            plane = [m for m in grid if m[c] == center[c]]
            xs, ys = sorted({m[a] for m in plane}), sorted({m[b] for m in plane})
            z = np.full((len(ys), len(xs)), np.nan)
            for m in plane:
                z[ys.index(m[b]), xs.index(m[a])] = m["gold"]["mean"]
            fig, ax = plt.subplots(figsize=(4.8, 4))
            im = ax.imshow(z, origin="lower", cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
            ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(z[i, j]):
                        ax.text(j, i, f"{z[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_xlabel(a)
            ax.set_ylabel(b)
            ax.set_title(f"final gold, {c}={center[c]:g}")
            fig.colorbar(im, ax=ax)
            save(fig, f"heatmap_{a}_{b}")
        clip = [
            (k, m) for k, m in methods.items() if m.get("dpo_reward_clip") is not None or m.get("is_default")
        ]
        if clip:
            _bars(plt, clip, "dpo_reward_clip (default betas)", sft, save, "clip")
    else:
        _bars(plt, list(methods.items()), f"{name}: final gold (95% CI)", sft, save, "gold_by_method")
    rl = [(k, m) for k, m in methods.items() if m.get("time_per_iteration")]
    if rl:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, m in rl:
            y, lo, hi = _err(m)
            ax.errorbar(m["time_per_iteration"]["total"], y, yerr=[[lo], [hi]], marker="o", capsize=3)
            ax.annotate(
                k,
                (m["time_per_iteration"]["total"], y),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("wall-clock seconds per iteration")
        ax.set_ylabel("final gold reward")
        ax.set_title("gold at its cost")
        save(fig, "gold_vs_cost")
    return made


def _bars(plt, items, title, sft, save, stem) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.5))
    names = [k for k, _ in items]
    ys = [_err(m) for _, m in items]
    ax.barh(range(len(items)), [y[0] for y in ys], xerr=[[y[1] for y in ys], [y[2] for y in ys]], capsize=3)
    ax.set_yticks(range(len(items)), names)
    ax.invert_yaxis()
    if sft is not None:
        ax.axvline(sft, color="gray", ls="--")
    ax.set_xlabel("gold reward (held-out)")
    ax.set_title(title)
    save(fig, stem)


# ----------------------------------------------------------------------------- frontier

FAMILY_COLORS = {"PPO": "tab:blue", "RTO": "tab:red", "DPO": "tab:green", "best-of-N": "tab:purple"}


def write_frontier_plots(results: dict, folder: Path) -> list[str]:
    """frontier.png (gold against KL: every point, each method's frontier with its band), overopt.png
    (gold and proxy against sqrt(KL) with Gao et al.'s fits), matched_kl.png (RTO - PPO at each KL)."""
    import numpy as np

    from rto.experiments.curves import gao_curve

    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    made: list[str] = []

    def save(fig, stem: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / f"{stem}.png", dpi=110)
        plt.close(fig)
        made.append(f"plots/{stem}.png")

    pts, sft = results["points"], results["sft"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for fam, color in FAMILY_COLORS.items():
        own = [p for p in pts if p["method"] == fam]
        if not own:
            continue
        ax.scatter([p["kl"] for p in own], [p["gold"] for p in own], s=12, color=color, alpha=0.35)
        f = results["frontier"].get(fam)
        if f and f["kl"]:
            ax.plot(f["kl"], f["gold"], color=color, lw=2, label=f"{fam} frontier",
                    drawstyle="steps-post" if "lo" in f else "default", marker=None if "lo" in f else "o")  # fmt: skip
            if "lo" in f:
                ax.fill_between(f["kl"], f["lo"], f["hi"], color=color, alpha=0.15, step="post")
    ax.scatter([0], [sft["gold"]], color="black", marker="*", s=80, label="SFT", zorder=5)
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("gold reward (held-out)")
    ax.set_title("reward-KL frontier (bands: 95% bootstrap over seeds and prompts)")
    ax.legend(fontsize=8)
    save(fig, "frontier")

    fits = results["fits"]
    fams = [f for f in ("PPO", "RTO", "best-of-N") if f in fits]
    if fams:
        fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.8), squeeze=False)
        for ax, fam in zip(axes[0], fams):
            own = [p for p in pts if p["method"] == fam and p["kl"] > 0]
            form = "bon" if fam == "best-of-N" else "rl"
            if not own:
                ax.set_title(f"{fam}: no point with KL > 0")
                continue
            kl = np.array([p["kl"] for p in own])
            grid = np.linspace(0, max(kl.max(), 1e-3) * 1.15, 100)
            for key, color in (("gold", "tab:orange"), ("proxy", "tab:gray")):
                base = sft[key]
                ax.scatter(np.sqrt(kl), [p[key] - base for p in own], s=10, color=color, alpha=0.5)
                c = fits[fam][key]
                ax.plot(np.sqrt(grid), gao_curve(grid, c["alpha"], c["beta"], form), color=color,
                        label=f"{key}: a={c['alpha']:.3f}, b={c['beta']:.3f}")  # fmt: skip
            ax.axhline(0, color="black", lw=0.5)
            ax.set_xlabel("sqrt(KL)")
            ax.set_ylabel("reward - SFT's")
            ax.set_title(f"{fam}: {'d(a - b d)' if form == 'bon' else 'd(a - b log d)'}")
            ax.legend(fontsize=7)
        save(fig, "overopt")

    rows = [r for r in results["matched"] if r.get("ci")]
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        x = [r["kl"] for r in rows]
        y = [r["diff"] for r in rows]
        err = [[r["diff"] - r["ci"][0] for r in rows], [r["ci"][1] - r["diff"] for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color="tab:red")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_xlabel("KL to SFT (matched)")
        ax.set_ylabel("gold(RTO) - gold(PPO), 95% CI")
        ax.set_title("RTO vs PPO at equal KL (best beta2 each)")
        save(fig, "matched_kl")
    return made


def _num(x: float, digits: int) -> str:
    """inf: a fitted curve that never turns down; nan: no fit."""
    return "none" if x == float("inf") else ("-" if x != x else f"{x:.{digits}f}")


def _ci(v, digits: int = 3) -> str:
    return f"[{_num(v[0], digits)}, {_num(v[1], digits)}]" if v else "-"


def write_frontier_summary(results: dict, path: Path) -> None:
    g = results["grid"]
    la = results.get("load_average") or {}
    lines = [
        f"# rto experiment frontier (preset {results['preset']})",
        "",
        f"Runtime of this invocation {results['runtime_s'] / 60:.1f} min; {results['n_cells']} cells, together "
        f"{results['cells_wall_s'] / 60:.1f} min wall and {results['cells_cpu_s'] / 60:.1f} min CPU (world stages "
        f"not included); load average {la.get('start')} at the start, {la.get('end')} at the end. "
        + _gold_line(results)
        + f"{results['ci']}.",
        "",
        f"Grid (fixed before any result): PPO and RTO at beta2 in {g['beta2']}, {g['seeds']} seed(s) each, "
        f"{g['ppo_iterations']} iterations, measured every {g['every']}; offline DPO at beta in {g['dpo_beta']}; "
        f"best-of-N from SFT chosen by the reward model, N in {g['best_of_n']}; SFT.",
        "",
        f"**RTO vs PPO at equal KL: {results['verdict']}.**",
        "",
        "| KL | PPO gold [95% CI] (beta2) | RTO gold [95% CI] (beta2) | RTO - PPO [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]

    def cell(v: dict | None) -> str:
        return f"{v['gold']:.3f} {_ci(v['ci'])} ({v['beta2']:g})" if v else "not reached"

    for r in results["matched"]:
        diff = f"{r['diff']:+.3f} {_ci(r['ci'])}" if r.get("ci") else "-"
        lines.append(f"| {r['kl']:g} | {cell(r['PPO'])} | {cell(r['RTO'])} | {diff} | {r['verdict']} |")
    lines += [
        "",
        "## Over-optimisation: Gao et al.'s forms fitted to reward - SFT's against d = sqrt(KL)",
        "",
        "| method | form | reward | alpha [95% CI] | beta [95% CI] | fitted peak KL [95% CI] (none: still rising) | points (max KL) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam, f in results["fits"].items():
        form = "d(a - b d)" if fam == "best-of-N" else "d(a - b log d)"
        for key in ("gold", "proxy"):
            c = f[key]
            lines.append(
                f"| {fam} | {form} | {key} | {_num(c['alpha'], 3)} {_ci(c['alpha_ci'])} | {_num(c['beta'], 3)} "
                f"{_ci(c['beta_ci'])} | {_num(c['peak_kl'], 1)} {_ci(c['peak_kl_ci'], 1)} | {f['n_points']} "
                f"({f['max_kl']:.1f}) |"
            )
    lines += [""] + [f"- {fam}: {f['reading']}." for fam, f in results["fits"].items()]
    lines += [
        "",
        "## Every point (seed means)",
        "",
        "| method | setting | iteration | KL | gold | proxy |",
        "|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        setting = f"beta2={p['beta2']:g}" if "beta2" in p else (
            f"N={p['coord']}" if p["method"] == "best-of-N" else f"beta={p['coord']:g}"
        )  # fmt: skip
        lines.append(
            f"| {p['method']} | {setting} | {p.get('iteration', '-')} | {p['kl']:.2f} | {p['gold']:.3f} | "
            f"{p['proxy']:.3f} |"
        )
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in results.get("plots", [])]
    path.write_text("\n".join(lines) + "\n")
