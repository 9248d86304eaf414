"""The demo's report: report.md, report.json (every number in the markdown) and plots/, built from the
files a demo run leaves under its folder (so it can be rebuilt without retraining):

- eval/eval.json, eval/samples.jsonl          (rto.eval on the held-out prompts)
- eval/heldout_pairs_scored.jsonl             (RM and DPO rewards of held-out labelled pairs)
- <method>-seed<k>/metrics.jsonl              (per-iteration rollout gold, RM score, KL)
- data/labels/label_stats.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rto.eval import split_group
from rto.jsonl import read_jsonl
from rto.report import plots
from rto.report.html import write_token_rewards_html
from rto.report.tables import (
    ci_text,
    comparisons_markdown,
    fmt,
    results_markdown,
    seeds_markdown,
    timings_markdown,
)
from rto.stats import verdict
from rto.tasks.gold import describe_gold

METHOD_LABELS = {"sft": "SFT (= pi_ref)", "dpo": "DPO", "ppo": "PPO", "rto": "RTO"}


def load_curves(out: Path, methods=("ppo", "rto")) -> dict[str, dict[str, Any]]:
    """Per method: iterations and per-seed lists of rollout gold, normalised RM score, KL and length,
    read from each run's metrics.jsonl (runs cut to the shortest, so seeds align)."""
    curves: dict[str, dict[str, Any]] = {}
    for method in methods:
        runs = sorted(
            out.glob(f"{method}-seed*/metrics.jsonl"), key=lambda p: split_group(p.parent.name)[1] or 0
        )
        rows = [read_jsonl(p) for p in runs]
        rows = [r for r in rows if r]
        if not rows:
            continue
        n = min(len(r) for r in rows)
        c: dict[str, Any] = {"iterations": [int(r["iteration"]) for r in rows[0][:n]], "seeds": len(rows)}
        for key, src in (
            ("gold", "gold"),
            ("rm", "score_normalized"),
            ("kl", "kl"),
            ("length", "response_length"),
        ):
            c[key + "_per_seed"] = [[float(x.get(src, float("nan"))) for x in r[:n]] for r in rows]
        curves[method] = c
    return curves


def _comparison(ev: dict, a: str, b: str) -> dict | None:
    comps = ev.get("comparisons", {})
    if f"{a} - {b}" in comps:
        c = dict(comps[f"{a} - {b}"])
    elif f"{b} - {a}" in comps:
        c0 = comps[f"{b} - {a}"]
        c = {"metric": c0.get("metric", "gold"), "diff": -c0["diff"], "ci": [-c0["ci"][1], -c0["ci"][0]]}
    else:
        return None
    c["verdict"] = verdict((c["diff"], c["ci"][0], c["ci"][1]), a.upper(), b.upper())
    return c


def results_rows(ev: dict) -> tuple[dict, dict]:
    """(results by method, per-seed results): single policies as they are, seed groups from the
    two-level bootstrap plus seed-averaged length/EOS/diversity/RM numbers."""
    pol = ev["policies"]
    results: dict[str, dict] = {}
    per_seed: dict[str, dict] = {}
    best = [n for n in pol if n.startswith("best-of-")]
    order = ["sft"] + best + ["dpo"]
    for name in order:
        if name in pol:
            label = METHOD_LABELS.get(name, name)
            if name in best:
                label = f"{name} from SFT (oracle)"
            results[name] = {"label": label, **pol[name]}
    for group in ("ppo", "rto"):
        g = ev.get("groups", {}).get(group)
        members = [n for n in pol if split_group(n)[0] == group and split_group(n)[1] is not None]
        if not members:
            continue
        for n in members:
            per_seed[n] = pol[n]
        avg = {
            k: float(np.mean([pol[n][k] for n in members]))
            for k in ("rm_score_normalized_mean", "distinct_1", "distinct_2", "length_mean", "eos_rate")
            if all(pol[n].get(k) is not None for n in members)
        }
        results[group] = {
            "label": f"{METHOD_LABELS[group]} ({len(members)} seed{'s' if len(members) > 1 else ''})",
            **avg,
            **{k: v for k, v in (g or {}).items()},
        }
    return results, per_seed


def token_examples(pairs: list[dict], n_pairs: int = 3, min_gap: float = 0.5) -> list[dict]:
    """The first ``n_pairs`` held-out pairs (file order) whose gold gap is at least ``min_gap`` -- a clear
    preference -- as chosen and rejected rows for the token-reward picture (falls back to the first pairs)."""
    picked = [p for p in pairs if abs(p["chosen_gold"] - p["rejected_gold"]) >= min_gap][:n_pairs]
    if len(picked) < n_pairs:
        picked += [p for p in pairs if p not in picked][: n_pairs - len(picked)]
    out = []
    for p in picked:
        for side in ("chosen", "rejected"):
            out.append(
                {
                    "label": side,
                    "prompt": p["prompt"],
                    "gold": p[f"{side}_gold"],
                    "tokens": p[f"{side}_tokens"],
                    "rewards": p[f"{side}_token_rewards"],
                }
            )
    return out


def learned_reward_stats(pairs: list[dict]) -> dict[str, Any]:
    """How well the RM and DPO's implicit reward rank held-out pairs: against the sampled labels and
    against the gold order (pairs with a gold tie are left out of the latter)."""
    if not pairs:
        return {"pairs": 0}
    gc = np.array([p["chosen_gold"] for p in pairs])
    gr = np.array([p["rejected_gold"] for p in pairs])
    dc = np.array([p["dpo_chosen"] for p in pairs])
    dr = np.array([p["dpo_rejected"] for p in pairs])
    rc = np.array([p["rm_chosen"] for p in pairs])
    rr = np.array([p["rm_rejected"] for p in pairs])
    untied = gc != gr
    sign = np.sign(gc - gr)

    def acc(a, b):
        return float(np.mean(a > b))

    def gold_acc(a, b):
        return float(np.mean(np.sign(a - b)[untied] == sign[untied])) if untied.any() else float("nan")

    return {
        "pairs": len(pairs),
        "label_agrees_with_gold": float(np.mean((gc > gr)[untied])) if untied.any() else float("nan"),
        "rm_accuracy_vs_labels": acc(rc, rr),
        "rm_accuracy_vs_gold": gold_acc(rc, rr),
        "dpo_accuracy_vs_labels": acc(dc, dr),
        "dpo_accuracy_vs_gold": gold_acc(dc, dr),
        "dpo_reward_chosen_mean": float(dc.mean()),
        "dpo_reward_rejected_mean": float(dr.mean()),
        "dpo_reward_corr_with_gold": float(np.corrcoef(np.r_[dc, dr], np.r_[gc, gr])[0, 1]),
        "rm_score_corr_with_gold": float(np.corrcoef(np.r_[rc, rr], np.r_[gc, gr])[0, 1]),
    }


# What each demo preset is for (the report names the one that was run).
PRESET_PURPOSE = {
    "test": "seconds, for the test suite: too small to learn anything",
    "smoke": "about a minute: checks that every stage runs, too small for conclusions",
    "default": "the measured comparison, under 10 minutes on 2 CPU cores",
    "smollm2": "the pretrained SmolLM2-135M-Instruct on real chat prompts, with LoRA",
}


def learned_reward_warnings(stats: dict[str, Any]) -> list[str]:
    """A warning for each learned reward that ranks the held-out pairs below chance (by gold): RL against
    it optimises something other than the gold reward, so the RL results say little."""
    out = []
    for key, name in (
        ("rm_accuracy_vs_gold", "reward model"),
        ("dpo_accuracy_vs_gold", "DPO model's implicit reward"),
    ):
        acc = stats.get(key)
        if stats.get("pairs") and acc is not None and acc < 0.5:
            out.append(
                f"Warning: the {name} ranks the higher-gold response first in only {acc:.0%} of "
                f"{stats['pairs']} held-out pairs, below chance (50%); it has not learned the gold preference "
                "(more preference pairs or epochs), and RL against it is not a test of PPO or RTO."
            )
    return out


def build_report(out: str | Path, run: dict[str, Any]) -> dict[str, Any]:
    """Write plots/, token_rewards.html, report.md and report.json under ``out``; returns the report dict."""
    out = Path(out)
    ev = json.loads((out / "eval" / "eval.json").read_text())
    label_stats = json.loads((out / "data" / "labels" / "label_stats.json").read_text())
    pairs = read_jsonl(out / "eval" / "heldout_pairs_scored.jsonl")
    samples = read_jsonl(out / "eval" / "samples.jsonl")
    cfg = run.get("config", {})
    curves = load_curves(out)
    results, per_seed = results_rows(ev)
    comparisons = {}
    for a, b in (
        ("rto", "ppo"),
        ("rto", "dpo"),
        ("ppo", "dpo"),
        ("rto", "sft"),
        ("ppo", "sft"),
        ("dpo", "sft"),
    ):
        c = _comparison(ev, a, b)
        if c is not None:
            comparisons[f"{a.upper()} - {b.upper()}"] = c
    main = comparisons.get("RTO - PPO")
    verdict_text = main["verdict"] if main else "not measured"
    rto, ppo = results.get("rto"), results.get("ppo")
    if main and rto and ppo:
        n_rl = len(rto.get("seeds", []))
        sentence = (
            f"Verdict on this run: {verdict_text}. Mean gold reward on {ev['n_prompts']} held-out prompts: RTO "
            f"{fmt(rto['gold_mean'], '+.3f')} {ci_text(rto['gold_ci'])}, PPO {fmt(ppo['gold_mean'], '+.3f')} "
            f"{ci_text(ppo['gold_ci'])}; RTO - PPO = {fmt(main['diff'], '+.3f')} {ci_text(main['ci'])} (95% CI, bootstrap "
            f"over {n_rl} RL seed{'s' if n_rl != 1 else ''} and the prompts). KL to the SFT model: RTO "
            f"{fmt(rto['kl_mean'], '.2f')}, PPO {fmt(ppo['kl_mean'], '.2f')} (compare at equal KL on the gold-vs-KL plot)."
        )
        if len(rto.get("seeds", [])) < 2 or len(ppo.get("seeds", [])) < 2:
            sentence += " With one RL seed the interval covers prompt noise only, not seed-to-seed variation."
    else:
        sentence = "Verdict on this run: PPO and RTO were not both evaluated."
    learned = learned_reward_stats(pairs)
    warnings = learned_reward_warnings(learned)
    if warnings:
        sentence += " " + " ".join(warnings)

    plot_dir = out / "plots"
    plot_paths: dict[str, str] = {}
    refs = {n: results[n]["gold_mean"] for n in results if n in ("sft", "dpo") or n.startswith("best-of")}
    if curves:
        plot_paths["curves"] = str(
            plots.curves_vs_iteration(curves, refs, plot_dir / "gold_vs_iteration.png")
        )
    points = []
    for name, r in list(results.items()):
        if name in ("ppo", "rto"):
            continue
        points.append({"group": "best-of-n" if name.startswith("best-of") else name, "label": r["label"],
                       "kl": r["kl_mean"], "gold": r["gold_mean"], "gold_ci": r["gold_ci"]})  # fmt: skip
    for name, r in per_seed.items():
        g = split_group(name)[0]
        points.append({"group": g, "label": f"{g.upper()} (final, per seed)", "kl": r["kl_mean"],
                       "gold": r["gold_mean"], "gold_ci": r["gold_ci"]})  # fmt: skip
    plot_paths["frontier"] = str(plots.frontier(curves, points, plot_dir / "gold_vs_kl.png"))
    examples = token_examples(pairs)
    if examples:
        plot_paths["token_rewards"] = str(plots.token_rewards(examples, plot_dir / "token_rewards.png"))
        plot_paths["token_rewards_html"] = str(
            write_token_rewards_html(
                examples,
                plot_dir / "token_rewards.html",
                "DPO token rewards on held-out preference pairs",
                note=f"Each token's background is beta * (log pi_dpo - log pi_ref) with beta = {cfg.get('dpo_beta', 0.1)} "
                "(blue positive, red negative); hover for the value. These are the dense rewards RTO adds "
                "(scaled by beta1 / beta in the PPO reward).",
            )
        )
    if pairs:
        plot_paths["dpo_hist"] = str(
            plots.dpo_reward_histogram(
                [p["dpo_chosen"] for p in pairs],
                [p["dpo_rejected"] for p in pairs],
                plot_dir / "dpo_reward_hist.png",
            )
        )
    lengths: dict[str, list[float]] = {}
    for s in samples:
        key = s["group"] if s["group"] in ("ppo", "rto") else s["policy"]
        lengths.setdefault(key, []).append(s["length"])
    plot_paths["lengths"] = str(
        plots.length_distributions(lengths, plot_dir / "lengths.png", cap=ev.get("max_new_tokens"))
    )

    report: dict[str, Any] = {
        "verdict": verdict_text,
        "verdict_sentence": sentence,
        "results": results,
        "per_seed": per_seed,
        "comparisons": comparisons,
        "learned_rewards_heldout": learned,
        "warnings": warnings,
        "labels": label_stats,
        "curves": curves,
        "eval_settings": {
            k: ev[k]
            for k in (
                "n_prompts",
                "samples_per_prompt",
                "sampling_seeds",
                "max_new_tokens",
                "temperature",
                "top_p",
                "ci",
                "gold_reward",
            )
            if k in ev
        },  # fmt: skip
        "plots": {k: str(Path(v).relative_to(out)) for k, v in plot_paths.items()},
        "run": run,
    }
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _models_line(cfg: dict) -> str:
    if not cfg.get("model"):
        first = (
            f"- **Models.** GPT-2 `{cfg.get('size')}` trained from scratch by SFT on {cfg.get('n_reviews')} reviews "
            f"({cfg.get('sft_steps')} steps)"
        )
    elif cfg.get("sft_steps"):
        first = (
            f"- **Models.** The pretrained `{cfg.get('model')}`, fine-tuned by SFT ({'LoRA, ' if cfg.get('lora') else ''}"
            f"{cfg.get('sft_steps')} steps) on the corpus's replies"
        )
    else:
        first = f"- **Models.** The pretrained chat model `{cfg.get('model')}` as it is (no SFT steps)"
    lora = (
        " Every trained stage used LoRA; PPO/RTO share one frozen base (reference = adapters off, DPO model = a "
        "frozen adapter, policy = a trained adapter)."
        if cfg.get("lora")
        else ""
    )
    return first + "; that SFT model is pi_ref, the PPO/RTO starting point and the DPO reference." + lora


def render_markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    cfg = run.get("config", {})
    ev = report["eval_settings"]
    lab = report["labels"]
    lr = report["learned_rewards_heldout"]
    curves = report["curves"]
    t = run.get("timings_s", {})
    total = run.get("total_s_before_report", sum(t.values()))
    machine = run.get("machine", {})
    n_seeds = cfg.get("seeds", 1)
    gold = ev.get("gold_reward", cfg.get("gold_reward", "vader"))
    rollouts = cfg.get("ppo_iterations", 0) * cfg.get("rollout_batch_size", 0)
    p = report["plots"]
    lines = [
        "# RTO vs PPO on the controlled-sentiment task"
        + (f" with {cfg['model']}" if cfg.get("model") else "")
        + (f" (preset {cfg['preset']})" if cfg.get("preset") else ""),
        "",
        f"**{report['verdict_sentence']}**",
        "",
        "## What was measured",
        "",
        f"- **Preset.** `rto demo --preset {cfg.get('preset', '?')}`"
        + (f" ({PRESET_PURPOSE[cfg['preset']]})" if cfg.get("preset") in PRESET_PURPOSE else "")
        + "; the settings below are its values unless changed on the command line.",
        (
            "- **Task.** Real short English user turns (chatterbot-corpus) in the model's chat template. The gold reward is "
            if cfg.get("model")
            else "- **Task.** Generated review-like texts; prompts are review openings. The gold reward is "
        )
        + f"`{gold}`: {describe_gold(gold)}. The reward model and the DPO model only ever saw Bradley-Terry labels "
        f"sampled from it (tau = {lab.get('tau')}), never the gold function.",
        _models_line(cfg),
        f"- **Preferences.** {lab['train']['pairs']} labelled pairs (2 SFT samples per prompt on "
        f"{cfg.get('n_pref_prompts')} prompts; the labelled choice has the higher gold in "
        f"{lab['train'].get('agreement_with_gold', float('nan')):.1%} of pairs). RM: {cfg.get('rm_epochs')} epochs; "
        f"DPO: beta = {cfg.get('dpo_beta')}, {cfg.get('dpo_epochs')} epochs.",
        f"- **RL budget (same for PPO and RTO).** {cfg.get('ppo_iterations')} iterations x "
        f"{cfg.get('rollout_batch_size')} prompts = {rollouts} rollouts per run, mini-batch "
        f"{cfg.get('mini_batch_size')}, {cfg.get('ppo_epochs')} PPO epoch(s), actor lr {cfg.get('actor_lr')}, critic lr "
        f"{cfg.get('critic_lr')}, KL coefficient beta2 = {cfg.get('beta2')}, RM weight beta3 = {cfg.get('beta3')}; RTO adds "
        f"the DPO token reward with beta1 = {cfg.get('beta1')}. Same SFT start and reference, same RM (critic initialised "
        f"from it), same prompts. {n_seeds} RL seed{'s' if n_seeds != 1 else ''} per method; SFT, preference data, RM "
        "and DPO are shared by all seeds.",
        f"- **Evaluation.** {ev.get('n_prompts')} held-out prompts (openings never used for preferences or RL), "
        f"{ev.get('samples_per_prompt')} sample(s) per prompt and policy at temperature {ev.get('temperature')}, at most "
        f"{ev.get('max_new_tokens')} new tokens. CIs: {ev.get('ci')}. Win rate: against the SFT model's sample for the "
        "same prompt and sampling seed, judged by gold, ties count half. KL: sampled, per sequence, "
        "sum of log pi - log pi_ref over the policy's own response tokens (an unbiased estimate of KL(pi || "
        "pi_ref), which can come out slightly negative when the true KL is near zero).",
        f"- **Run time.** {total / 60:.1f} min for all stages up to evaluation on {machine.get('cpu_count')} CPUs "
        f"({machine.get('workers', 1)} worker process(es) x {machine.get('torch_threads')} torch thread(s); load "
        f"average at start {machine.get('load_average_start')}, at end {machine.get('load_average_end')}; other jobs "
        "sharing the CPU slow it down)."
        + (
            f" Stages reused from an earlier run: {', '.join(run['reused_stages'])}."
            if run.get("reused_stages")
            else ""
        ),
        "",
        "## Results on held-out prompts",
        "",
        results_markdown(report["results"]),
        "",
        "Best-of-N reads the gold reward at test time: it is an oracle upper reference, not a competitor; its KL is "
        "the analytic log N - (N-1)/N."
        + (
            " A negative KL is sampling noise around a KL close to zero (the estimate is unbiased, not always "
            "positive)."
            if any(r.get("kl_mean", 0) < 0 for r in report["results"].values())
            else ""
        ),
        "",
        comparisons_markdown(report["comparisons"]),
        "",
    ]
    if report["per_seed"]:
        lines += ["### Per RL seed", "", seeds_markdown(report["per_seed"]), ""]
    if curves:
        lines += ["### During training (rollout samples)", ""]
        lines.append(
            "| method | seed | gold at first iteration | gold at last iteration | KL at last iteration |"
        )
        lines.append("|---|---|---|---|---|")
        for m, c in curves.items():
            for s, (g, k) in enumerate(zip(c["gold_per_seed"], c["kl_per_seed"])):
                lines.append(
                    f"| {m.upper()} | {s} | {fmt(g[0], '+.3f')} | {fmt(g[-1], '+.3f')} | {fmt(k[-1], '.2f')} |"
                )
        lines.append("")
    lines += [
        "## Learned rewards on held-out preference pairs",
        "",
        f"{lr.get('pairs', 0)} extra pairs on the held-out prompts, labelled the same way and never trained on.",
        "",
        "| | ranks the labelled choice first | ranks the higher-gold response first | correlation with gold |",
        "|---|---|---|---|",
    ]
    if lr.get("pairs"):
        lines += [
            f"| reward model | {lr['rm_accuracy_vs_labels']:.1%} | {lr['rm_accuracy_vs_gold']:.1%} | "
            f"{fmt(lr['rm_score_corr_with_gold'], '+.2f')} |",
            f"| DPO implicit reward (summed token rewards) | {lr['dpo_accuracy_vs_labels']:.1%} | "
            f"{lr['dpo_accuracy_vs_gold']:.1%} | {fmt(lr['dpo_reward_corr_with_gold'], '+.2f')} |",
            f"| the labels themselves | 100% | {lr['label_agrees_with_gold']:.1%} | |",
            "",
            f"Mean summed DPO reward: chosen {fmt(lr['dpo_reward_chosen_mean'], '+.3f')}, rejected "
            f"{fmt(lr['dpo_reward_rejected_mean'], '+.3f')}.",
        ]
        lines += [""] + [f"**{w}**" for w in report.get("warnings", [])]
    lines += ["", "## Plots", ""]
    captions = [
        ("curves", "Gold reward (left), normalised RM score (middle) and KL to the reference (right) of the rollout "
                   "samples at each PPO iteration; line = mean over seeds, band = min-max. Dashed: evaluation gold of "
                   "SFT, DPO and best-of-N. RM rising while gold falls would be reward hacking."),
        ("frontier", "Gold reward against KL to the SFT model. Faint lines: per-iteration rollout gold and sampled KL "
                     "from each run's metrics.jsonl (training prompts). Markers: final policies on the held-out "
                     "prompts (95% CI bars)."),
        ("token_rewards", "DPO token rewards beta * (log pi_dpo - log pi_ref) on held-out pairs with a clear gold gap "
                          "(first three in file order with |gap| >= 0.5); HTML version: plots/token_rewards.html."),
        ("dpo_hist", "Summed DPO token rewards of chosen vs rejected responses of held-out pairs: check this before "
                     "trusting the DPO model as a reward."),
        ("lengths", "Response lengths per method on the held-out prompts (length drift is the classic RLHF failure)."),
    ]  # fmt: skip
    for key, cap in captions:
        if key in p:
            lines += [f"![{key}]({p[key]})", "", cap, ""]
    lines += [
        "## Stage timings",
        "",
        "Wall and CPU seconds per stage; RM and DPO, and the RL runs, ran two at a time in parallel, so the wall "
        "times overlap.",
        "",
        timings_markdown(t, run.get("cpu_s", {})),
        "",
    ]
    lines += [
        "## Notes",
        "",
        "- One run of a small experiment: the CIs cover prompt-sampling noise and (with several seeds, crudely) RL "
        "seed noise, not the variation of SFT/RM/DPO training, which all seeds share.",
        "- The per-iteration gold is measured on each iteration's rollout (training prompts), the table on held-out "
        "prompts; both use the same gold function.",
        "- More gold at a larger KL is not the same as a better trade-off: the gold-vs-KL plot shows whether one "
        "method reaches more gold than the other at the same distance from the SFT model.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "build_report",
    "render_markdown",
    "load_curves",
    "results_rows",
    "learned_reward_stats",
    "token_examples",
]
