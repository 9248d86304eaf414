"""`rto experiment --name frontier`: does RTO beat PPO at equal KL? The reward-KL frontier of every
method, and over-optimisation curves (gold and proxy reward against sqrt(KL), Gao et al. 2022).

Methods, each from the same SFT model (= pi_ref), reward model, prompts and budget:

- PPO and RTO, each trained once per seed at every beta2 of a fixed grid (``BETA2_GRID``), evaluated on the
  held-out prompts every ``every`` iterations (from checkpoints) and at the end: many (KL, gold) points per
  method, along each run's trajectory (which starts at SFT, KL 0).
- offline DPO at every beta of ``DPO_BETAS`` (one model each);
- best-of-N from SFT, the response chosen by the reward model (the proxy), N = 1, 2, 4, ... n_max; its KL
  is the analytic log N - (N - 1) / N;
- SFT itself.

The grids were fixed before any result was seen, and every grid point gets the same budget:
``BETA2_GRID`` spans weak to strong regularisation in factors of 2-2.5 around the demo's beta2 = 0.05 (0.01:
the sweep's weakest, where RTO drifted far from the reference; 0.2: its strongest), for both methods alike;
``DPO_BETAS`` spans 0.03 to 3 in factors of ~3 around the demo's 0.1 (the DPO paper's controlled-sentiment
frontier used 0.05 to 5).

Every point is measured on the same held-out prompts with the same sampling seeds as every other
(common random numbers): gold reward, KL to SFT (sampled, per response), the proxy (the reward model's
score, normalised as PPO sees it) and length, per prompt. The analysis (``analyse``; pure functions in
``rto.experiments.curves``):

- frontier per method: the best gold reachable at each KL. For PPO/RTO: at KL x, the best (over beta2)
  seed-mean gold interpolated at x along each run's trajectory, then the best at any KL <= x; bands are
  95% bootstrap intervals (seeds and prompts resampled; the choice of the best beta2 is redone in every
  resample, so the band carries that selection too).
- RTO vs PPO at matched KL (``KL_TARGETS``): the difference of those two best values at each KL, with a
  paired bootstrap (prompts resampled jointly, each method's seeds independently). "not resolved" when the
  interval covers 0; "out of range" when no beta2 of a method reaches that KL in every seed.
- Gao et al.'s forms fitted to gold and proxy (minus SFT's) against d = sqrt(KL): RL d(alpha - beta log d)
  to each RL method's points, best-of-N d(alpha - beta d) to best-of-N's, with bootstrap intervals on the
  coefficients and on the KL where each fitted curve peaks.

Group estimators (GRPO-style advantages) join by adding rows to ``METHODS`` (name -> reward mode,
advantage estimator); everything downstream takes the methods from there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rto.experiments import core
from rto.experiments.cells import cell_hash
from rto.experiments.curves import fit_gao, gao_peak_kl, interpolate_at, pareto_front

# Fixed before any frontier result was seen (see the module docstring for the reasons).
BETA2_GRID = (0.01, 0.02, 0.05, 0.1, 0.2)
DPO_BETAS = (0.03, 0.1, 0.3, 1.0, 3.0)
KL_TARGETS = (2.0, 5.0, 10.0, 20.0)
# RL methods on the frontier: name -> (reward mode, advantage estimator). Group estimators: add rows here.
METHODS = {"PPO": ("ppo", "gae"), "RTO": ("rto", "gae")}
PER_PROMPT = ("gold", "kl", "proxy", "length")


# ----------------------------------------------------------------------------- measuring policies


class Scorer:
    """Samples held-out responses of a policy and scores them: gold, KL to SFT, proxy (RM score,
    normalised with the RM's training statistics) and length, with the sampling settings and seeds of
    ``rto.experiments.core.evaluate_policy`` (so the final point of a run is what the other experiments
    report for it)."""

    def __init__(self, d, world: Path, rm_dir: Path):
        from rto import models
        from rto.data.tokenize import tokenize_prompt
        from rto.jsonl import read_jsonl
        from rto.scoring import RewardModel
        from rto.tasks.gold import load_gold_reward

        self.d, self.world = d, world
        self.tok = models.load_tokenizer(str(world / "sft"), padding_side="left")
        self.ref = models.freeze(models.load_causal_lm(str(world / "sft"), self.tok))
        models.disable_dropout(self.ref)
        self.rm = RewardModel.load(str(rm_dir), self.tok, normalize=True)
        self.rm_mean, self.rm_std = self.rm.mean, self.rm.std
        self.prompts = [r["prompt"] for r in read_jsonl(world / "data" / "prompts_eval.jsonl")]
        self.prompt_ids = [
            tokenize_prompt(self.tok, {"prompt": p}, max_prompt_length=128)["input_ids"] for p in self.prompts
        ]
        self.gold_fn = load_gold_reward(d.gold_reward)

    def samples(self, policy, k: int, seed: int):
        from rto.engines import SamplingSettings, make_engine
        from rto.eval import sample_and_score

        settings = SamplingSettings(
            self.d.max_new_tokens, 1.0, 1.0, self.tok.eos_token_id, self.tok.pad_token_id
        )
        engine = make_engine("hf", policy, settings)
        try:
            return sample_and_score(
                engine, policy, self.ref, self.tok, self.prompt_ids, self.prompts, self.gold_fn, reps=1, k=k,
                seed=seed, batch_size=128, rm=self.rm, with_kl=policy is not self.ref,
            )  # fmt: skip
        finally:
            engine.close()

    def per_prompt(self, policy) -> dict[str, list[float]]:
        s = self.samples(policy, self.d.eval_samples, self.d.seed + 777)
        proxy = (s.rm - self.rm_mean) / self.rm_std
        return {
            key: np.asarray(a, dtype=float).mean(axis=(0, 2)).tolist()
            for key, a in (("gold", s.gold), ("kl", s.kl), ("proxy", proxy), ("length", s.length))
        }

    def load(self, folder: Path):
        from rto import models

        model = models.freeze(models.load_causal_lm(str(folder), self.tok))
        models.disable_dropout(model)
        return model

    def load_checkpoint(self, ckpt: Path):
        """The policy saved in a training checkpoint (its weights on the SFT model's architecture)."""
        from safetensors.torch import load_file

        from rto import models
        from rto.errors import RtoError

        model = models.load_causal_lm(str(self.world / "sft"), self.tok)
        missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise RtoError(
                f"{ckpt}: the checkpoint's weights do not fit the SFT model "
                f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        model.tie_weights()
        models.disable_dropout(model)
        return models.freeze(model)


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints of a run, in order."""
    from rto.trainers.checkpoints import list_checkpoints

    return [(int(p.name[5:]), p) for p in list_checkpoints(run_dir)]


def evaluate_trajectory(d, world: Path, run_dir: Path, rm_dir: Path) -> dict:
    """Every checkpoint of a finished run and its final policy, measured on the held-out prompts; the
    checkpoints are deleted afterwards (only the numbers are kept)."""
    import shutil

    from rto.errors import RtoError

    if d.lora:
        raise RtoError(
            "the frontier experiment evaluates full-weight checkpoints: it does not support --lora"
        )
    sc = Scorer(d, world, rm_dir)
    points = []
    for step, ckpt in _checkpoints(run_dir):
        points.append({"iteration": step, "per_prompt": sc.per_prompt(sc.load_checkpoint(ckpt))})
    final = sc.per_prompt(sc.load(run_dir))
    points.append({"iteration": d.ppo_iterations, "per_prompt": final})
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    summary = {f"{k}_mean": float(np.mean(v)) for k, v in final.items()}
    return {"trajectory": points, "per_prompt": final, "eval": summary}


def points_spec(demo: dict, rm: dict, policy: dict | None) -> dict:
    """A fixed policy (SFT when ``policy`` is None, else a pref cell's model) measured with proxy."""
    return {
        "kind": "points",
        "demo": demo,
        "rm": cell_hash(rm),
        "policy": None if policy is None else cell_hash(policy),
    }


def run_points_cell(spec: dict, folder: Path) -> dict:
    out, world = folder.parents[1], folder.parents[1] / "world"
    d = core.demo_from_spec(spec["demo"], world)
    sc = Scorer(d, world, out / "cells" / spec["rm"] / "model")
    policy = sc.ref if spec["policy"] is None else sc.load(out / "cells" / spec["policy"] / "model")
    per = sc.per_prompt(policy)
    return {"per_prompt": per, "eval": {f"{k}_mean": float(np.mean(v)) for k, v in per.items()}}


def bon_spec(demo: dict, rm: dict, n_max: int) -> dict:
    return {"kind": "bon", "demo": demo, "rm": cell_hash(rm), "n_max": n_max}


def bon_sizes(n_max: int) -> list[int]:
    return [2**i for i in range(int(math.log2(n_max)) + 1)]


def run_bon_cell(spec: dict, folder: Path) -> dict:
    """Best-of-N from SFT, chosen by the reward model: n_max samples per prompt, and for each N the
    n_max / N disjoint groups of N, each reduced to its highest-RM sample; per prompt the mean over groups
    of the chosen samples' gold and proxy. Sampling seeds differ from the evaluation's (as rto eval's
    best-of-N)."""
    from rto.eval import best_of_n_kl

    out, world = folder.parents[1], folder.parents[1] / "world"
    d = core.demo_from_spec(spec["demo"], world)
    sc = Scorer(d, world, out / "cells" / spec["rm"] / "model")
    n_max = spec["n_max"]
    s = sc.samples(sc.ref, n_max, d.seed + 100_003)
    gold, proxy, length = s.gold[0], (s.rm[0] - sc.rm_mean) / sc.rm_std, s.length[0]  # (prompts, n_max)
    per_n = {}
    for n in bon_sizes(n_max):
        g = n_max // n
        shape = (gold.shape[0], g, n)
        pick = proxy.reshape(shape).argmax(axis=2)[..., None]

        def chosen(a, pick=pick, shape=shape):
            return np.take_along_axis(a.reshape(shape), pick, axis=2)[..., 0].mean(axis=1).tolist()

        per_n[str(n)] = {
            "kl": best_of_n_kl(n) if n > 1 else 0.0,
            "per_prompt": {"gold": chosen(gold), "proxy": chosen(proxy), "length": chosen(length)},
        }
    return {"per_n": per_n}


# ----------------------------------------------------------------------------- the plan


def plan(demo: dict, preset: dict, seeds: int) -> tuple[list[dict], dict[str, list[dict]], dict[str, dict]]:
    """(pref cells, method -> cells, method -> coordinates). RL methods are keyed 'PPO b2=0.05'."""
    f = preset["frontier"]
    rm, dpo = core.pref_spec(demo, "rm"), core.pref_spec(demo, "dpo")
    prefs = [rm, dpo]
    methods: dict[str, list[dict]] = {"SFT": [points_spec(demo, rm, None)]}
    meta: dict[str, dict] = {"SFT": {"family": "SFT"}}
    for name, (mode, adv) in METHODS.items():
        for b in f["beta2"]:
            key = f"{name} b2={b:g}"
            methods[key] = [
                core.rl_spec(
                    demo, mode, rm, dpo, k, advantage=adv, trajectory_every=f["every"], beta2=float(b)
                )
                for k in range(seeds)
            ]
            meta[key] = {"family": name, "beta2": float(b)}
    for b in f["dpo_beta"]:
        src = core.pref_spec(demo, "dpo", beta=float(b))
        if src not in prefs:
            prefs.append(src)
        key = f"DPO beta={b:g}"
        methods[key] = [points_spec(demo, rm, src)]
        meta[key] = {"family": "DPO", "beta": float(b)}
    methods["best-of-N"] = [bon_spec(demo, rm, f["best_of_max"])]
    meta["best-of-N"] = {"family": "best-of-N"}
    return prefs, methods, meta


# ----------------------------------------------------------------------------- analysis


def _arr(rows: list[dict], key: str) -> np.ndarray:
    return np.asarray([r[key] for r in rows], dtype=float)


def rl_arrays(cells: list[dict], sft: dict) -> dict[str, np.ndarray]:
    """(seeds, points, prompts) arrays of one RL configuration, point 0 being SFT (KL 0), and the
    iterations of the points."""
    out = {}
    for key in PER_PROMPT:
        out[key] = np.stack(
            [np.stack([sft[key]] + [p["per_prompt"][key] for p in c["trajectory"]]) for c in cells]
        )
    out["kl"][:, 0] = 0.0
    out["iterations"] = np.asarray([0] + [p["iteration"] for p in cells[0]["trajectory"]])
    return out


def _best_at(vals: np.ndarray, gi: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """vals: (configs, seeds, prompts), all nan for configs that do not reach the KL. For each bootstrap
    draw (gi: (B, seeds), pi: (B, prompts)) the best config's mean: (B,) (nan when none reaches it)."""
    means = np.stack([v[gi[:, :, None], pi[:, None, :]].mean(axis=(1, 2)) for v in vals])  # (configs, B)
    valid = ~np.isnan(means).any(axis=1)
    return means[valid].max(axis=0) if valid.any() else np.full(len(gi), np.nan)


def at_kl(configs: list[dict[str, np.ndarray]], target: float, key: str = "gold") -> np.ndarray:
    """(configs, seeds, prompts): each run's per-prompt ``key`` interpolated at KL = target along its
    trajectory (the run's mean KL over prompts sets the weights); a config whose seeds do not all reach
    the target is all nan."""
    out = []
    for c in configs:
        kl_run = c["kl"].mean(axis=2)  # (seeds, points)
        v = np.stack([interpolate_at(kl_run[s], c[key][s], [target])[0] for s in range(kl_run.shape[0])])
        out.append(v if np.isfinite(v).all() else np.full_like(v, np.nan))
    return np.stack(out)


def analyse(
    rl: dict[str, dict[float, dict[str, np.ndarray]]],
    fixed: dict[str, list[tuple[float, dict]]],
    sft: dict,
    targets=KL_TARGETS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The frontier experiment's numbers. ``rl``: method -> beta2 -> rl_arrays; ``fixed``: method (DPO,
    best-of-N) -> [(coordinate, {'kl': per-prompt or analytic, 'gold': .., 'proxy': ..})]; ``sft``:
    SFT's per-prompt numbers."""
    rng = np.random.default_rng(seed)
    n_prompts = len(sft["gold"])
    pi = rng.integers(n_prompts, size=(n_boot, n_prompts))
    draws = {}
    for m, cfgs in rl.items():
        n_seeds = next(iter(cfgs.values()))["gold"].shape[0]
        draws[m] = rng.integers(n_seeds, size=(n_boot, n_seeds))
    gold_sft, proxy_sft = float(np.mean(sft["gold"])), float(np.mean(sft["proxy"]))
    res: dict = {
        "sft": {"gold": gold_sft, "proxy": proxy_sft},
        "points": [],
        "matched": [],
        "frontier": {},
        "fits": {},
    }

    # every measured point (seed means)
    for m, cfgs in rl.items():
        for b, c in cfgs.items():
            for t, it in enumerate(c["iterations"]):
                res["points"].append({
                    "method": m, "beta2": b, "iteration": int(it), "kl": float(c["kl"][:, t].mean()),
                    "gold": float(c["gold"][:, t].mean()), "proxy": float(c["proxy"][:, t].mean()),
                    "length": float(c["length"][:, t].mean()), "n_seeds": int(c["gold"].shape[0]),
                })  # fmt: skip
    for m, pts in fixed.items():
        for coord, p in pts:
            g = np.asarray(p["gold"], dtype=float)
            lo, hi = np.quantile(g[pi].mean(axis=1), [0.025, 0.975])
            res["points"].append({
                "method": m, "coord": coord, "kl": float(np.mean(p["kl"])), "gold": float(g.mean()),
                "gold_ci": [float(lo), float(hi)], "proxy": float(np.mean(p["proxy"])), "n_seeds": 1,
            })  # fmt: skip

    # matched KL: RTO vs PPO
    if {"PPO", "RTO"} <= set(rl):
        for t in targets:
            row: dict = {"kl": t}
            boot = {}
            for m in ("PPO", "RTO"):
                betas = list(rl[m])
                vals = at_kl([rl[m][b] for b in betas], t)
                means = [float(v.mean()) if np.isfinite(v).all() else math.nan for v in vals]
                if all(math.isnan(x) for x in means):
                    row[m] = None
                    continue
                best = int(np.nanargmax(means))
                boot[m] = _best_at(vals, draws[m], pi)
                lo, hi = np.nanquantile(boot[m], [0.025, 0.975])
                row[m] = {"gold": means[best], "beta2": betas[best], "ci": [float(lo), float(hi)]}
            if row["PPO"] is None or row["RTO"] is None:
                missing = [m for m in ("PPO", "RTO") if row[m] is None]
                row.update(
                    diff=None, ci=None, verdict=f"out of range ({' and '.join(missing)} never reach KL {t:g})"
                )
            else:
                diff = boot["RTO"] - boot["PPO"]
                lo, hi = np.nanquantile(diff, [0.025, 0.975])
                d = row["RTO"]["gold"] - row["PPO"]["gold"]
                v = "RTO > PPO" if lo > 0 else ("PPO > RTO" if hi < 0 else "not resolved")
                row.update(diff=d, ci=[float(lo), float(hi)], verdict=v)
            res["matched"].append(row)

    # frontier curves with bands (RL methods), and the Pareto points of the fixed methods
    max_kl = max([p["kl"] for p in res["points"]] + [1e-6])
    grid = np.linspace(0.0, max_kl, 41)
    sub = slice(0, min(n_boot, 500))
    for m, cfgs in rl.items():
        g_pt, g_bt = [], []
        for x in grid:
            vals = at_kl(list(cfgs.values()), float(x))
            means = [float(v.mean()) if np.isfinite(v).all() else math.nan for v in vals]
            g_pt.append(np.nanmax(means) if not all(math.isnan(y) for y in means) else math.nan)
            g_bt.append(_best_at(vals, draws[m][sub], pi[sub]))
        g_pt, g_bt = np.asarray(g_pt), np.stack(g_bt, axis=1)  # (grid,), (B, grid)
        f_pt, f_bt = _running_max(g_pt), np.stack([_running_max(r) for r in g_bt])
        with np.errstate(all="ignore"):
            lo, hi = np.nanquantile(f_bt, [0.025, 0.975], axis=0)
        ok = np.isfinite(f_pt)
        res["frontier"][m] = {
            "kl": grid[ok].tolist(),
            "gold": f_pt[ok].tolist(),
            "lo": lo[ok].tolist(),
            "hi": hi[ok].tolist(),
        }
    for m in fixed:
        pts = [p for p in res["points"] if p["method"] == m]
        idx = pareto_front([p["kl"] for p in pts], [p["gold"] for p in pts])
        res["frontier"][m] = {"kl": [pts[i]["kl"] for i in idx], "gold": [pts[i]["gold"] for i in idx],
                              "coord": [pts[i]["coord"] for i in idx]}  # fmt: skip

    # Gao et al.'s forms: gold and proxy relative to SFT against sqrt(KL)
    for m, cfgs in rl.items():
        res["fits"][m] = _fit_rl(cfgs, sft, draws[m][sub], pi[sub])
    if "best-of-N" in fixed:
        res["fits"]["best-of-N"] = _fit_fixed(fixed["best-of-N"], sft, pi[sub], "bon")
    return res


def _running_max(a: np.ndarray) -> np.ndarray:
    out, best = np.full_like(a, np.nan), -math.inf
    for i, x in enumerate(a):
        if np.isfinite(x):
            best = max(best, x)
        if best > -math.inf:
            out[i] = best
    return out


def _q(v: np.ndarray) -> list[float]:
    """95% percentile interval without interpolating between resamples (so an infinite peak, a curve that
    never turns down, stays infinite); nan when empty."""
    if len(v) == 0:
        return [math.nan, math.nan]
    return [float(x) for x in np.quantile(v, [0.025, 0.975], method="inverted_cdf")]


def _coef_summary(kl, gold, proxy, boot_fn, form: str, n_boot: int) -> dict:
    out = {"max_kl": float(np.max(kl)), "n_points": int(len(kl))}
    boots = [boot_fn(b) for b in range(n_boot)]
    for name, r, col in (("gold", gold, 1), ("proxy", proxy, 2)):
        a, b = fit_gao(kl, r, form)
        fits = np.array([fit_gao(x[0], x[col], form) for x in boots])
        peaks = np.array([gao_peak_kl(p, q, form) for p, q in fits])
        ok = ~np.isnan(fits[:, 0])
        out[name] = {
            "alpha": a, "beta": b, "alpha_ci": _q(fits[ok, 0]), "beta_ci": _q(fits[ok, 1]),
            "peak_kl": gao_peak_kl(a, b, form), "peak_kl_ci": _q(peaks[ok]),
        }  # fmt: skip
    g, p, top = out["gold"]["peak_kl"], out["proxy"]["peak_kl"], out["max_kl"]
    if math.isnan(out["gold"]["alpha"]):
        out["reading"] = "fewer than two points with KL > 0: no fit"
    elif g <= top:
        proxy = "the fitted proxy is still rising there" if p > g else f"the fitted proxy peaks at KL {p:.1f}"
        out["reading"] = (
            f"fitted gold peaks at KL {g:.1f}, inside the measured range (max {top:.1f}); {proxy}"
        )
    else:
        out["reading"] = f"the fitted gold still rises at the largest KL measured ({top:.1f})"
    return out


def _fit_rl(cfgs: dict, sft: dict, gi: np.ndarray, pi: np.ndarray) -> dict:
    """RL form on every checkpoint of every beta2 (seed means; SFT subtracted)."""
    cs = list(cfgs.values())
    sg, sp = np.asarray(sft["gold"]), np.asarray(sft["proxy"])

    def points(g_idx, p_idx):
        kl, gold, proxy = [], [], []
        for c in cs:
            sel = lambda a: a[g_idx][:, :, p_idx].mean(axis=(0, 2))[1:]  # noqa: E731 - (points,) skip SFT
            kl.append(sel(c["kl"]))
            gold.append(sel(c["gold"]) - sg[p_idx].mean())
            proxy.append(sel(c["proxy"]) - sp[p_idx].mean())
        return np.concatenate(kl), np.concatenate(gold), np.concatenate(proxy)

    n_seeds, n_prompts = cs[0]["gold"].shape[0], cs[0]["gold"].shape[2]
    kl, gold, proxy = points(np.arange(n_seeds), np.arange(n_prompts))
    return _coef_summary(kl, gold, proxy, lambda b: points(gi[b], pi[b]), "rl", len(gi))


def _fit_fixed(pts: list[tuple[float, dict]], sft: dict, pi: np.ndarray, form: str) -> dict:
    kl = np.asarray([float(np.mean(p["kl"])) for _, p in pts])
    g = np.stack([np.asarray(p["gold"], dtype=float) - np.asarray(sft["gold"]) for _, p in pts])
    x = np.stack([np.asarray(p["proxy"], dtype=float) - np.asarray(sft["proxy"]) for _, p in pts])
    return _coef_summary(
        kl, g.mean(1), x.mean(1), lambda b: (kl, g[:, pi[b]].mean(1), x[:, pi[b]].mean(1)), form, len(pi)
    )


def overall_verdict(matched: list[dict]) -> str:
    """One sentence over the matched-KL rows."""
    by: dict[str, list[str]] = {}
    for r in matched:
        key = r["verdict"].split(" (")[0]
        by.setdefault(key, []).append(f"{r['kl']:g}")
    order = ("RTO > PPO", "PPO > RTO", "not resolved", "out of range")
    parts = [f"{k} at KL {', '.join(by[k])}" for k in order if k in by]
    return "; ".join(parts) if parts else "no comparison"


# ----------------------------------------------------------------------------- running


def run_frontier(cfg, demo: dict, preset: dict, out: Path, t0: float, done, reuse=()) -> Path:
    """Plan, compute (cached cells), analyse and report; called by rto.experiments.run.run_experiment."""
    import dataclasses
    import os
    import time

    from rto.experiments.cells import run_cells, write_json_atomic
    from rto.experiments.report import write_frontier_plots, write_frontier_summary

    load_start = _loadavg()
    prefs, methods, meta = plan(demo, preset, cfg.seeds)
    print("== preference models", flush=True)
    pref_res = run_cells(out, prefs, "rto.experiments.core:run_cell", cfg.workers, cfg.threads, done, reuse)
    print("== policies", flush=True)
    specs = [s for cells in methods.values() for s in cells]
    # seed by seed (the fixed policies after seed 0): an interrupted run holds whole seeds, and rerunning
    # it with fewer --seeds reuses them
    specs.sort(key=lambda s: s["seed"] if s["kind"] == "rl" else 0.5)
    flat = run_cells(out, specs, "rto.experiments.core:run_cell", cfg.workers, cfg.threads, done, reuse)
    by_hash = {r["hash"]: r for r in flat}
    res = {m: [by_hash[cell_hash(s)] for s in cells] for m, cells in methods.items()}
    sft = res["SFT"][0]["per_prompt"]
    rl = {
        fam: {meta[k]["beta2"]: rl_arrays(res[k], sft) for k in res if meta[k]["family"] == fam}
        for fam in METHODS
    }
    fixed = {
        "DPO": [(meta[k]["beta"], res[k][0]["per_prompt"]) for k in res if meta[k]["family"] == "DPO"],
        "best-of-N": [
            (int(n), {**v["per_prompt"], "kl": v["kl"]}) for n, v in res["best-of-N"][0]["per_n"].items()
        ],
    }
    print("== analysis", flush=True)
    analysis = analyse(rl, fixed, sft, targets=preset["frontier"].get("targets", KL_TARGETS))
    rl_cells = [r for r in flat if r["spec"]["kind"] == "rl"]
    unique = {r["hash"]: r for r in [*flat, *pref_res]}.values()
    results = {
        "experiment": "frontier",
        "preset": cfg.preset,
        "config": dataclasses.asdict(cfg),
        "world": demo,
        "grid": {
            "methods": {k: list(v) for k, v in METHODS.items()},
            "beta2": list(preset["frontier"]["beta2"]),
            "dpo_beta": list(preset["frontier"]["dpo_beta"]),
            "best_of_n": bon_sizes(preset["frontier"]["best_of_max"]),
            "every": preset["frontier"]["every"],
            "ppo_iterations": demo["ppo_iterations"],
            "seeds": cfg.seeds,
        },
        **analysis,
        "verdict": overall_verdict(analysis["matched"]),
        "n_cells": len(unique),
        "runtime_s": time.perf_counter() - t0,
        "cells_wall_s": sum(r["wall_s"] for r in unique),
        "cells_cpu_s": sum(r["cpu_s"] for r in unique),
        "cpu_s_per_rl_run": float(np.mean([r["cpu_s"] for r in rl_cells])) if rl_cells else None,
        "load_average": {"start": load_start, "end": _loadavg()},
        "cpu_count": os.cpu_count(),
        "ci": "95% bootstrap over training seeds and held-out prompts (paired over prompts between methods)",
    }
    results["plots"] = write_frontier_plots(results, out / "plots")
    write_json_atomic(out / "results.json", results)
    write_frontier_summary(results, out / "summary.md")
    print(f"\nverdict (RTO vs PPO at equal KL): {results['verdict']}")
    print(f"rto experiment frontier: done in {results['runtime_s'] / 60:.1f} min -> {out / 'summary.md'}")
    return out


def _loadavg() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
