"""Plans, runs and reports the four experiments (see rto.experiments)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rto.errors import ConfigError
from rto.experiments import core, frontier
from rto.experiments.cells import cell_hash, run_cells, world_fingerprint, write_json_atomic
from rto.stats import aggregate, compare

NAMES = ("data-scaling", "variants", "sweep", "token-sources", "frontier")

# quick: the demo's "test" world and 1 PPO iteration (the test suite). default: sized so that each
# experiment finishes on a 2-core CPU in under an hour (docs/experiments.md: measured costs, estimates).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        demo_preset="test", demo=dict(ppo_iterations=1), seeds=1,
        fractions=(0.125, 1.0),
        sweep={"beta1": (0.05, 0.1), "beta2": (0.05, 0.1), "beta3": (1.0, 2.0), "dpo_reward_clip": (0.02,)},
        per_experiment={"frontier": dict(ppo_iterations=2)},
        # plumbing only: two points of each grid, a checkpoint every iteration, best-of-1..4
        frontier=dict(beta2=(0.01, 0.2), dpo_beta=(0.1, 1.0), best_of_max=4, every=1, targets=(0.01, 2.0)),
        group_variants=("RTO+RLOO/token", "PPO+GRPO/seq"),  # plumbing: one of each reward, level, estimator
    ),
    "default": dict(
        demo_preset="default", demo=dict(ppo_iterations=40), seeds=3,
        per_experiment={"sweep": dict(ppo_iterations=30)},  # 63 runs: 30 iterations keep it under an hour
        fractions=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
        sweep={"beta1": (0.01, 0.05, 0.2), "beta2": (0.01, 0.05, 0.2), "beta3": (0.25, 1.0, 4.0),
               "dpo_reward_clip": (0.05, 0.01)},
        # the grids of rto.experiments.frontier (fixed before any result; reasons there); 40 iterations as
        # variants and data-scaling, evaluated every 8
        frontier=dict(beta2=frontier.BETA2_GRID, dpo_beta=frontier.DPO_BETAS, best_of_max=64, every=8,
                      targets=frontier.KL_TARGETS),
        group_variants=None,  # all of GROUP_VARIANTS
    ),
}  # fmt: skip

# The paper's variants (the reward modes of the README): name -> (reward mode, advantage).
VARIANTS = {
    "PPO": ("ppo", "gae"),
    "RTO": ("rto", "gae"),
    "Semi-RTO": ("semi-rto", "gae"),
    "DDPO": ("ddpo", "gae"),
    "RS-PPO": ("rs-ppo", "gae"),
    "DPO-only": ("dpo-only", "gae"),
    "REINFORCE++": ("ppo", "reinforce++"),
    "RTO+REINFORCE++": ("rto", "reinforce++"),
}

# Critic-free group estimators (docs/estimators.md): name -> (reward mode, advantage, baseline level). Each
# samples GROUP_K responses for rollout_batch_size / GROUP_K prompts, so an iteration generates as many
# responses as every other row (the same generated-token budget at equal response lengths).
GROUP_K = 4
GROUP_VARIANTS = {
    f"{reward}+{name}/{short}": (mode, adv, level)
    for name, adv in (("RLOO", "rloo"), ("GRPO", "grpo"))
    for reward, mode in (("PPO", "ppo"), ("RTO", "rto"))
    for short, level in (("seq", "sequence"), ("token", "token"))
}

# Preference learners of token-sources and their beta (SimPO's scale is larger: its reward is a
# length-normalised log-prob, not a log-ratio; SimPO paper range 2-2.5).
TOKEN_SOURCES = {"sigmoid": 0.1, "ipo": 0.1, "simpo": 2.0, "rdpo": 0.1, "tdpo": 0.1}


@dataclass
class ExperimentConfig:
    """One of the paper's claims at small scale, on the demo's controlled-sentiment task: cached, resumable
    cells; results.json, PNG plots and summary.md under --out."""

    name: Literal["data-scaling", "variants", "sweep", "token-sources", "frontier"] = "variants"
    """Which experiment."""
    preset: Literal["quick", "default"] = "default"
    """quick: seconds-to-minutes sizes (tests); default: under an hour on a 2-core CPU."""
    out: str = ""
    """Output folder (default runs/experiment-<name>-<preset>); rerun with the same --out to resume."""
    seeds: int | None = None
    """RL seeds per method (preset: quick 1, default 3)."""
    ppo_iterations: int | None = None
    """Override the preset's PPO iterations per run (equal for every method)."""
    pref_budget: Literal["epochs", "steps"] = "epochs"
    """data-scaling: train each fraction's reward and DPO models for the same epochs as on all pairs (fewer optimizer steps on less data), or for the same number of steps (more epochs on less data)."""
    gold_reward: str = "vader"
    """Gold reward that labels the preference pairs and judges every policy: 'vader', 'module:function' or 'file.py:function' (as `rto demo --gold-reward`); part of every cell's settings."""
    only: str = ""
    """Compute and report only these methods, comma-separated (e.g. 'RTO+RLOO/token,PPO+GRPO/seq'); default: every method of the experiment."""
    reuse_from: str = ""
    """Output folders of earlier experiments, comma-separated: their finished cells whose settings coincide with this run's (same cell hash) are copied into --out instead of computed, when their world (SFT model, data, labels) is this run's; an empty --out starts from the first one's world."""
    workers: int = 2
    """Cells computed in parallel (processes)."""
    threads: int = 1
    """torch CPU threads per worker process."""


def resolve(cfg: ExperimentConfig) -> tuple[ExperimentConfig, Any, dict]:
    """(config with defaults filled, the demo config of the shared world, the preset)."""
    from rto.demo import DemoConfig
    from rto.demo import resolve as demo_resolve

    if cfg.name not in NAMES:
        raise ConfigError(f"field 'name' must be one of {', '.join(NAMES)}, got {cfg.name!r}")
    if cfg.preset not in PRESETS:
        raise ConfigError(f"field 'preset' must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    p = PRESETS[cfg.preset]
    cfg = dataclasses.replace(cfg, seeds=cfg.seeds or p["seeds"])
    if cfg.seeds < 1 or cfg.workers < 1 or cfg.threads < 1:
        raise ConfigError("fields 'seeds', 'workers' and 'threads' must be >= 1")
    if cfg.only and cfg.name == "frontier":
        raise ConfigError("field 'only' selects methods of the table experiments, not of frontier")
    if cfg.pref_budget not in ("epochs", "steps"):
        raise ConfigError(f"field 'pref_budget' must be 'epochs' or 'steps', got {cfg.pref_budget!r}")
    if not cfg.out:
        cfg.out = f"runs/experiment-{cfg.name}-{cfg.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for src in reuse_folders(cfg):
        if not (src / "cells").is_dir():
            raise ConfigError(
                f"field 'reuse_from': {src} is not an experiment output folder (no cells/ in it)"
            )
        if src.resolve() == Path(cfg.out).resolve():
            raise ConfigError(f"field 'reuse_from': {src} is --out itself")
    demo_over = {**p["demo"], **p.get("per_experiment", {}).get(cfg.name, {})}
    if cfg.ppo_iterations:
        demo_over["ppo_iterations"] = cfg.ppo_iterations
    dcfg = demo_resolve(
        DemoConfig(out=str(Path(cfg.out) / "world"), preset=p["demo_preset"], seeds=1, progress=False, reuse=True,
                   workers=1, threads=cfg.threads, gold_reward=cfg.gold_reward, **demo_over)
    )  # fmt: skip
    return cfg, dcfg, p


# ----------------------------------------------------------------------------- plans


@dataclass
class Plan:
    prefs: list[dict]
    methods: dict[str, list[dict]]  # method -> its cells (one per seed; one for a fixed policy)
    meta: dict[str, dict] = dataclasses.field(default_factory=dict)  # method -> plotting coordinates


def plan(cfg: ExperimentConfig, demo: dict, preset: dict) -> Plan:
    seeds = range(cfg.seeds)
    rm, dpo = core.pref_spec(demo, "rm"), core.pref_spec(demo, "dpo")
    sft = {"SFT": [core.eval_spec(demo, None)]}
    if cfg.name == "data-scaling":
        prefs, methods, meta = [], dict(sft), {}
        for f in preset["fractions"]:
            steps = cfg.pref_budget == "steps"
            rm_f = core.pref_spec(demo, "rm", f, constant_steps=steps)
            dpo_f = core.pref_spec(demo, "dpo", f, constant_steps=steps)
            prefs += [rm_f, dpo_f]
            for name, mode in (("PPO", "ppo"), ("RTO", "rto")):
                key = f"{name} @ {f:g}"
                methods[key] = [core.rl_spec(demo, mode, rm_f, dpo_f, k) for k in seeds]
                meta[key] = {"method": name, "fraction": f, "pref": cell_hash(rm_f)}
        return Plan(prefs, methods, meta)
    if cfg.name == "variants":
        methods = {
            name: [core.rl_spec(demo, mode, rm, dpo, k, advantage=adv) for k in seeds]
            for name, (mode, adv) in VARIANTS.items()
        }
        group = preset.get("group_variants") or tuple(GROUP_VARIANTS)
        for name in group:
            mode, adv, level = GROUP_VARIANTS[name]
            over = dict(num_samples_per_prompt=GROUP_K, rollout_batch_size=demo["rollout_batch_size"] // GROUP_K,
                        baseline_level=level)  # fmt: skip
            methods[name] = [core.rl_spec(demo, mode, rm, dpo, k, advantage=adv, **over) for k in seeds]
        methods["DPO (offline)"] = [core.eval_spec(demo, dpo)]
        return Plan([rm, dpo], {**methods, **sft})
    if cfg.name == "sweep":
        grid = preset["sweep"]
        center = {b: float(demo[b]) for b in ("beta1", "beta2", "beta3")}
        points = []
        for a, b in (("beta1", "beta2"), ("beta1", "beta3"), ("beta2", "beta3")):
            for va in grid[a]:
                for vb in grid[b]:
                    pt = {**center, a: float(va), b: float(vb)}
                    if pt not in points:
                        points.append(pt)
        if center not in points:
            points.append(center)
        methods, meta = {}, {}
        for pt in points:
            key = f"b1={pt['beta1']:g} b2={pt['beta2']:g} b3={pt['beta3']:g}"
            methods[key] = [core.rl_spec(demo, "rto", rm, dpo, k, **pt) for k in seeds]
            meta[key] = {**pt, "dpo_reward_clip": None}
        for c in grid["dpo_reward_clip"]:
            key = f"clip={c:g}"
            methods[key] = [core.rl_spec(demo, "rto", rm, dpo, k, dpo_reward_clip=float(c)) for k in seeds]
            meta[key] = {**center, "dpo_reward_clip": float(c)}
        return Plan([rm, dpo], {**methods, **sft}, meta)
    # token-sources
    prefs, methods, meta = [rm], {"PPO": [core.rl_spec(demo, "ppo", rm, None, k) for k in seeds]}, {}
    for loss, beta in TOKEN_SOURCES.items():
        src = core.pref_spec(demo, "dpo", 1.0, loss_type=loss, beta=beta)
        prefs.append(src)
        methods[f"RTO [{loss}]"] = [core.rl_spec(demo, "rto", rm, src, k) for k in seeds]
        methods[f"offline {loss}"] = [core.eval_spec(demo, src)]
        meta[f"RTO [{loss}]"] = meta[f"offline {loss}"] = {"source": loss, "beta": beta}
    return Plan(prefs, {**methods, **sft}, meta)


def restrict(p: Plan, only: str) -> Plan:
    """The plan cut down to the methods named in ``only`` (comma-separated; empty: all of them) and the
    preference models they use."""
    if not only:
        return p
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in p.methods]
    if unknown:
        raise ConfigError(
            f"field 'only': no method {', '.join(map(repr, unknown))}; methods: {', '.join(p.methods)}"
        )
    methods = {n: p.methods[n] for n in names}
    used = {s.get(k) for cells in methods.values() for s in cells for k in ("rm", "dpo", "policy")}
    prefs = [pf for pf in p.prefs if cell_hash(pf) in used]
    return Plan(prefs, methods, {n: m for n, m in p.meta.items() if n in methods})


# ----------------------------------------------------------------------------- claims


def claims(name: str, res: dict[str, list[dict]], meta: dict, preset: dict) -> list[dict]:
    """The paper's claims, each read off a paired 95% interval of gold differences."""
    out = []

    def cmp(a: str, b: str, claim: str, holds) -> None:
        if a in res and b in res:
            c = compare(res[a], res[b], a, b)
            lo, hi = c["ci"]
            ok = holds(c["diff"], lo, hi)
            # "A > B" not shown is not "A <= B": only an interval on the wrong side contradicts it.
            status = "holds" if ok else ("contradicted" if hi < 0 or holds is same else "not shown")
            c.update(claim=claim, holds=ok, status=status)
            out.append(c)

    better = lambda d, lo, hi: lo > 0  # noqa: E731 - significantly better
    same = lambda d, lo, hi: lo <= 0 <= hi  # noqa: E731 - no significant difference
    not_worse = lambda d, lo, hi: hi >= 0  # noqa: E731
    if name == "data-scaling":
        fr = preset["fractions"]
        small = 0.125 if 0.125 in fr else min(fr)
        cmp(f"RTO @ {small:g}", f"PPO @ {max(fr):g}",
            f"RTO with {small:g} of the data reaches PPO with {max(fr):g} (not significantly worse)", not_worse)  # fmt: skip
        for f in fr:
            cmp(f"RTO @ {f:g}", f"PPO @ {f:g}", f"RTO > PPO at fraction {f:g}", better)
    elif name == "variants":
        cmp("RTO", "PPO", "RTO > PPO", better)
        cmp("RTO", "Semi-RTO", "denser is better: RTO > Semi-RTO", better)
        cmp("Semi-RTO", "DDPO", "denser is better: Semi-RTO > DDPO", better)
        cmp("RS-PPO", "RTO", "shaping: RS-PPO ≈ RTO (no significant difference)", same)
        cmp("RTO+REINFORCE++", "REINFORCE++", "RTO+REINFORCE++ > REINFORCE++", better)
        for est in ("RLOO", "GRPO"):
            cmp(f"RTO+{est}/token", f"RTO+{est}/seq", f"{est}: the token-level baseline > the sequence level "
                "with RTO rewards", better)  # fmt: skip
            cmp(
                f"RTO+{est}/token",
                f"PPO+{est}/seq",
                f"{est}: RTO rewards (token level) > PPO rewards",
                better,
            )
            cmp(
                f"RTO+{est}/token",
                "RTO",
                f"RTO+{est}/token vs RTO with GAE (no significant difference)",
                same,
            )
    elif name == "token-sources":
        for loss in TOKEN_SOURCES:
            if loss != "sigmoid":
                cmp(
                    f"RTO [{loss}]",
                    "RTO [sigmoid]",
                    f"{loss} as token-reward source vs DPO (sigmoid)",
                    better,
                )
            cmp(f"RTO [{loss}]", "PPO", f"RTO with {loss} token rewards > PPO", better)
    elif name == "sweep":
        center = [k for k, m in meta.items() if m.get("dpo_reward_clip") is None]
        if not center:  # restricted to clipped points (--only)
            return out
        best = max(center, key=lambda k: sum(sum(r["per_prompt"]["gold"]) for r in res[k]) / len(res[k]))
        default = next((k for k in center if k == _default_key(meta)), None)
        if default and best != default:
            cmp(best, default, "best grid point > the default betas", better)
    return out


def _default_key(meta: dict) -> str | None:
    return next((k for k, m in meta.items() if m.get("is_default")), None)


# ----------------------------------------------------------------------------- running


def reuse_folders(cfg: ExperimentConfig) -> list[Path]:
    return [Path(x.strip()) for x in cfg.reuse_from.split(",") if x.strip()]


def adopt_world(out: Path, sources: list[Path]) -> None:
    """An --out without a world starts from a copy of the first source's (its stages are then reused
    where their settings are this run's, and computed again where not)."""
    import shutil

    world = out / "world"
    src = next((s / "world" for s in sources if world_fingerprint(s) is not None), None)
    if src is not None and not world.exists():
        print(f"== world: starting from a copy of {src}", flush=True)
        shutil.copytree(src, world)


def same_world(out: Path, sources: list[Path]) -> list[Path]:
    """The sources whose world files are this run's (the others are named and left out)."""
    mine = world_fingerprint(out)
    usable = [s for s in sources if world_fingerprint(s) == mine]
    for s in sources:
        if s not in usable:
            print(f"== not reusing cells of {s}: its world (SFT model, data or labels) differs", flush=True)
    return usable


def run_experiment(cfg: ExperimentConfig) -> Path:
    """`rto experiment`: returns the output folder (results.json, summary.md, plots/*.png, cells/)."""
    import torch

    cfg, dcfg, preset = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    print(f"rto experiment {cfg.name}: preset {cfg.preset}, {cfg.seeds} seed(s), out {out}", flush=True)
    from rto.tasks.gold import load_gold_reward

    load_gold_reward(cfg.gold_reward)  # fail now, not after training, if the spec is wrong
    adopt_world(out, reuse_folders(cfg))
    core.build_world(dcfg)
    reuse = same_world(out, reuse_folders(cfg))
    demo = core.demo_spec(dcfg)

    def done(r: dict) -> None:
        s = r["spec"]
        what = s.get("mode") or s.get("model") or s["kind"]
        extra = (
            f" beta2={s['overrides']['beta2']:g} seed {s['seed']}"
            if "beta2" in s.get("overrides", {})
            else ""
        )
        print(
            f"   cell {r['hash']} ({s['kind']} {what}{extra}): {r['wall_s']:.1f}s (CPU {r['cpu_s']:.1f}s)",
            flush=True,
        )

    if cfg.name == "frontier":
        return frontier.run_frontier(cfg, demo, preset, out, t0, done, reuse)
    p = restrict(plan(cfg, demo, preset), cfg.only)
    if cfg.name == "sweep":
        for m in p.meta.values():
            m["is_default"] = m.get("dpo_reward_clip") is None and all(
                m[b] == float(demo[b]) for b in ("beta1", "beta2", "beta3")
            )

    print("== preference models", flush=True)
    run_cells(out, p.prefs, "rto.experiments.core:run_cell", cfg.workers, cfg.threads, done, reuse)
    print("== policies", flush=True)
    specs = [s for cells in p.methods.values() for s in cells]
    flat = run_cells(out, specs, "rto.experiments.core:run_cell", cfg.workers, cfg.threads, done, reuse)
    by_hash = {r["hash"]: r for r in flat}
    res = {m: [by_hash[cell_hash(s)] for s in cells] for m, cells in p.methods.items()}
    prefs = {cell_hash(s): core.load_result_for(out, s) for s in p.prefs}
    methods = {m: {**aggregate(rs), **p.meta.get(m, {})} for m, rs in res.items()}
    for m, meta in p.meta.items():
        if "pref" in meta:
            methods[m]["n_pairs"] = prefs[meta["pref"]]["n_pairs"]
    results = {
        "experiment": cfg.name,
        "preset": cfg.preset,
        "config": dataclasses.asdict(cfg),
        "world": demo,
        "methods": methods,
        "claims": claims(cfg.name, res, p.meta, preset),
        "n_cells": len(set(by_hash)) + len(p.prefs),
        "runtime_s": time.perf_counter() - t0,  # this invocation (a resumed run counts only its own part)
        # every cell's own seconds, whenever it ran: the cost of the whole experiment, resumes included
        "cells_wall_s": sum(r["wall_s"] for r in flat_unique(flat, prefs.values())),
        "cells_cpu_s": sum(r["cpu_s"] for r in flat_unique(flat, prefs.values())),
        "ci": "95% two-level bootstrap over seeds and held-out prompts (prompts only for one seed)",
    }
    from rto.experiments.report import write_plots, write_summary

    results["plots"] = write_plots(cfg.name, results, out / "plots")
    write_json_atomic(out / "results.json", results)
    write_summary(results, out / "summary.md")
    print(f"\nrto experiment {cfg.name}: done in {results['runtime_s'] / 60:.1f} min -> {out / 'summary.md'}")
    return out


def flat_unique(*groups) -> list[dict]:
    seen: dict[str, dict] = {}
    for g in groups:
        for r in g:
            seen.setdefault(r["hash"], r)
    return list(seen.values())


def load_results(out: str | Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())
