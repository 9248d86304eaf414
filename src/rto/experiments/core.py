"""The shared world and the three kinds of cell every experiment is built from.

world   the demo's data, tokenizer, SFT model and Bradley-Terry labels (rto.stages, reused by
        signature), under ``<out>/world``: shared by every cell of the experiment.
pref    a reward model or a preference-trained policy (DPO, IPO, SimPO, R-DPO, TDPO) on the first
        ``fraction`` of the labelled pairs.
rl      one PPO-family run (reward mode, advantage, betas, seed) from the SFT model with the given RM and
        token-reward model, then evaluated on the held-out prompts.
eval    a fixed policy (SFT, an offline preference model) evaluated on the held-out prompts.

Cell specs hold the resolved demo settings, so a changed world changes every hash downstream. Paths in a
spec are relative to the experiment folder (``folder.parents[1]`` of a cell), so a moved folder still
resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rto.demo import DemoConfig

# Demo settings that are process-level, not part of any result.
_RUNTIME = ("out", "reuse", "progress", "workers", "threads", "preset")


# Demo settings of the RL and evaluation stages only: left out of pref cells' specs, so that changing the
# RL budget reuses the trained reward and DPO models.
RL_ONLY = ("ppo_iterations", "rollout_batch_size", "mini_batch_size", "actor_lr", "critic_lr", "ppo_epochs",
           "beta1", "beta2", "beta3", "eval_samples", "best_of_n", "seeds")  # fmt: skip


# Settings added to the demo after cells were first cached: left out of a spec while at these values (the
# behaviour before they existed), so those cells keep their hashes; any other value enters the hash.
_LATER_SETTINGS = {"engine": "hf", "temperature": 1.0, "top_p": 1.0, "num_samples_per_prompt": 1}


def demo_spec(dcfg: DemoConfig) -> dict:
    # The pretrained-model settings are left out when unused, so cells cached before they existed stay valid.
    return {
        k: v
        for k, v in dataclasses.asdict(dcfg).items()
        if k not in _RUNTIME
        and not (k in ("model", "lora") and not v)
        and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])
    }


def demo_from_spec(spec_demo: dict, world: Path) -> DemoConfig:
    return DemoConfig(**spec_demo, out=str(world), progress=False, reuse=True, workers=1, threads=1)


def build_world(dcfg: DemoConfig) -> Path:
    """The demo's data, init, SFT and label stages under dcfg.out (skipped when already done)."""
    from rto.runner import Job, Stages, quiet_transformers
    from rto.stages import stage_signatures

    quiet_transformers()
    pipe = Stages(reuse=dcfg.reuse, progress=dcfg.progress)
    sigs = stage_signatures(dcfg)
    root = Path(dcfg.out)
    for name, folder, stage in (
        ("data", root / "data", "stage_data"),
        ("model", root / "init", "stage_init"),
        ("sft", root / "sft", "stage_sft"),
        ("label", root / "data" / "labels", "stage_label"),
    ):
        pipe.run(Job(name, folder, sigs[name], f"rto.stages:{stage}", {"cfg": dcfg, "root": root}))
    return root


def _out_of(folder: Path) -> Path:
    return folder.parents[1]


# ----------------------------------------------------------------------------- pref cells


# Preference losses whose implementation changed: the revision enters their cells' spec, so cells cached by
# an earlier version are computed again instead of reused (other losses keep their hashes).
# rdpo 2: the length term's sign follows the R-DPO paper.
LOSS_REVISIONS = {"rdpo": 2}


def pref_spec(
    demo: dict,
    model: str,
    fraction: float = 1.0,
    loss_type: str = "sigmoid",
    beta: float | None = None,
    constant_steps: bool = False,
):
    """A reward model (model='rm') or a preference-trained policy (model='dpo', any --loss-type).
    ``constant_steps``: train a fraction of the pairs for as many optimizer steps as all of them get
    (epochs / fraction), instead of for the same epochs."""
    demo = {k: v for k, v in demo.items() if k not in RL_ONLY}
    spec = {"kind": "pref", "demo": demo, "model": model, "fraction": fraction}
    if constant_steps and fraction < 1.0:  # at fraction 1 both budgets are the same cell
        spec["constant_steps"] = True
    if model == "dpo":
        spec.update(loss_type=loss_type, beta=demo["dpo_beta"] if beta is None else beta)
        if loss_type in LOSS_REVISIONS:
            spec["loss_revision"] = LOSS_REVISIONS[loss_type]
    return spec


def run_pref_cell(spec: dict, folder: Path) -> dict:
    from rto.jsonl import read_jsonl, write_jsonl
    from rto.stages import train_preference, train_rm

    out = _out_of(folder)
    world = out / "world"
    d = demo_from_spec(spec["demo"], world)
    pairs = read_jsonl(world / "data" / "labels" / "preferences.jsonl")
    n = max(d.pref_batch_size, round(len(pairs) * spec["fraction"]))
    data = write_jsonl(folder / "preferences.jsonl", pairs[:n])
    # the folder is named by the spec's hash, so checkpoints in it are this cell's own (see run_rl_cell)
    # (a cell without result.json and without checkpoints is computed again: it replaces what is there)
    resume = (folder / "model" / "checkpoints").is_dir()
    over: dict = {"resume": resume, "overwrite_output_dir": not resume}
    over["num_epochs"] = d.rm_epochs if spec["model"] == "rm" else d.dpo_epochs
    if spec.get("constant_steps"):  # as many optimizer steps as training on all the pairs takes
        from rto.trainers.data_order import total_steps_for

        over["max_steps"] = total_steps_for(len(pairs), d.pref_batch_size, over["num_epochs"], -1)
    if spec["model"] == "rm":
        train_rm(d, world / "sft", data, folder / "model", **over)
    else:
        train_preference(
            d, world / "sft", data, folder / "model", beta=spec["beta"], loss_type=spec["loss_type"], **over
        )
    return {"path": str((folder / "model").relative_to(out)), "n_pairs": len(pairs[:n])}


# ----------------------------------------------------------------------------- rl cells


def rl_spec(
    demo: dict,
    mode: str,
    rm: dict,
    dpo: dict | None,
    seed: int,
    advantage: str = "gae",
    trajectory_every: int = 0,
    **overrides,
) -> dict:
    """One PPO-family run. ``rm`` and ``dpo`` are the pref specs it uses (their hashes enter this hash);
    ``overrides`` are PPOConfig fields (beta1, beta2, beta3, dpo_reward_clip). ``trajectory_every`` k > 0:
    also evaluate the policy every k iterations (rto.experiments.frontier); left out of the spec when 0,
    so the other experiments' cells keep their hashes."""
    from rto.experiments.cells import cell_hash

    spec = {
        "kind": "rl", "demo": demo, "mode": mode, "advantage": advantage, "seed": seed,
        "rm": cell_hash(rm), "dpo": None if dpo is None or mode == "ppo" else cell_hash(dpo),
        "overrides": dict(sorted(overrides.items())),
    }  # fmt: skip
    if trajectory_every:
        spec["trajectory_every"] = trajectory_every
    return spec


def run_rl_cell(spec: dict, folder: Path) -> dict:
    from rto.experiments.cost import passes_per_iteration, time_per_iteration
    from rto.jsonl import read_jsonl
    from rto.stages import ppo_config, run_rl

    out = _out_of(folder)
    world = out / "world"
    d = demo_from_spec(spec["demo"], world)
    base = ppo_config(d, world, "ppo", spec["seed"])
    cfg = dataclasses.replace(
        base,
        reward_mode=spec["mode"],
        advantage=spec["advantage"],
        reward_model=str(out / "cells" / spec["rm"] / "model"),
        dpo_model=None if spec["dpo"] is None else str(out / "cells" / spec["dpo"] / "model"),
        output_dir=str(folder / "policy"),
        progress=False,
        # the folder is named by the spec's hash, so checkpoints in it are this cell's own, left by an
        # interrupted experiment: continue them
        resume=(folder / "policy" / "checkpoints").is_dir(),
        overwrite_output_dir=not (folder / "policy" / "checkpoints").is_dir(),
        **spec["overrides"],
    )
    every = spec.get("trajectory_every", 0)
    if every:  # a checkpoint every k iterations, all kept until the trajectory is evaluated
        cfg = dataclasses.replace(cfg, save_steps=every, save_total_limit=d.ppo_iterations // every + 1)
    run_rl(cfg, d.gold_reward)
    metrics = read_jsonl(folder / "policy" / "metrics.jsonl")
    curve = [r["gold"] for r in metrics if "gold" in r]
    if every:
        from rto.experiments.frontier import evaluate_trajectory

        result = evaluate_trajectory(d, world, folder / "policy", out / "cells" / spec["rm"] / "model")
    else:
        result = evaluate_policy(d, world, folder / "policy")
    result.update(
        train_gold_curve=curve,
        final_train_gold=curve[-1] if curve else None,
        time_per_iteration=time_per_iteration(folder / "policy" / "metrics.jsonl"),
        passes_per_iteration=passes_per_iteration(
            spec["mode"],
            spec["advantage"],
            cfg.ppo_epochs,
            cfg.rollout_batch_size,
            cfg.mini_batch_size,
            cfg.max_new_tokens,
            cfg.num_samples_per_prompt,
        ),  # fmt: skip
    )
    return result


# ----------------------------------------------------------------------------- eval cells


def eval_spec(demo: dict, policy: dict | None) -> dict:
    """A fixed policy: the SFT model (policy None) or the model of a pref cell."""
    from rto.experiments.cells import cell_hash

    return {"kind": "eval", "demo": demo, "policy": None if policy is None else cell_hash(policy)}


def run_eval_cell(spec: dict, folder: Path) -> dict:
    out = _out_of(folder)
    world = out / "world"
    d = demo_from_spec(spec["demo"], world)
    path = world / "sft" if spec["policy"] is None else out / "cells" / spec["policy"] / "model"
    return evaluate_policy(d, world, path)


def evaluate_policy(d: DemoConfig, world: Path, policy: Path) -> dict:
    """Per held-out prompt: mean gold, win fraction against SFT samples (same prompt and sample index,
    ties half), KL to SFT and response length. The SFT samples use the same sampling seed in every cell,
    so every method meets the same baseline."""
    import numpy as np

    from rto.eval import evaluate
    from rto.jsonl import read_jsonl
    from rto.stats import win_outcomes
    from rto.tasks.gold import load_gold_reward

    prompts = [r["prompt"] for r in read_jsonl(world / "data" / "prompts_eval.jsonl")]
    report, records = evaluate(
        {"policy": str(policy)}, prompts, str(world / "sft"), load_gold_reward(d.gold_reward),
        samples_per_prompt=d.eval_samples, seed=d.seed + 777, max_new_tokens=d.max_new_tokens, best_of=0,
        batch_size=128, progress=False, gold_name=d.gold_reward,
    )  # fmt: skip
    base = report["baseline"]
    P, K = len(prompts), d.eval_samples

    def grid(name: str, key: str) -> np.ndarray:
        a = np.full((P, K), np.nan)
        for r in records:
            if r["policy"] == name and r["sampling_seed"] == d.seed + 777:
                a[r["prompt_index"], r["sample"]] = r[key]
        return a

    gold, gold_sft = grid("policy", "gold"), grid(base, "gold")
    per_prompt = {
        "gold": gold.mean(1).tolist(),
        "win": win_outcomes(gold, gold_sft).mean(1).tolist(),
        "kl": grid("policy", "kl").mean(1).tolist(),
        "length": grid("policy", "length").mean(1).tolist(),
    }
    summary = report["policies"]["policy"]
    keep = ("gold_mean", "gold_ci", "kl_mean", "length_mean", "eos_rate", "distinct_2", "rm_score_mean")
    return {"per_prompt": per_prompt, "eval": {k: summary[k] for k in keep if k in summary}}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_cell(spec: dict, folder: Path) -> dict:
    """Dispatch on the spec's kind (the function rto.experiments.cells.run_cells calls)."""
    if spec["kind"] in ("points", "bon"):
        from rto.experiments import frontier

        return {"points": frontier.run_points_cell, "bon": frontier.run_bon_cell}[spec["kind"]](spec, folder)
    return {"pref": run_pref_cell, "rl": run_rl_cell, "eval": run_eval_cell}[spec["kind"]](spec, folder)


def load_result_for(out: Path, spec: dict) -> dict:
    from rto.experiments.cells import load_result

    r = load_result(out, spec)
    if r is None:
        raise RuntimeError(f"cell {spec} has no result")
    return r
