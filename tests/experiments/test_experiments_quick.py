"""Each experiment end to end at the quick preset (one shared world), and resume after an interruption."""

import json
import math
import shutil

import pytest

from rto.cli import main
from rto.errors import ConfigError
from rto.experiments import ExperimentConfig, core, run_experiment
from rto.experiments.cells import computed_log, world_fingerprint
from rto.experiments.run import GROUP_K, GROUP_VARIANTS, plan, resolve, restrict


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture(scope="module")
def variants(root):
    out = root / "variants"
    assert main(["experiment", "--name", "variants", "--preset", "quick", "--out", str(out)]) == 0
    return out


def _with_world(root, variants, name):
    """A fresh experiment folder holding the variants run's world (data, SFT, labels): reused, not rebuilt."""
    out = root / name
    shutil.copytree(variants / "world", out / "world")
    run_experiment(ExperimentConfig(name=name, preset="quick", out=str(out)))
    return json.loads((out / "results.json").read_text()), out


def _check_outputs(out, res):
    assert (out / "summary.md").is_file()
    for p in res["plots"]:
        assert (out / p).stat().st_size > 1000
    for name, m in res["methods"].items():
        assert m["n_seeds"] == 1 and m["single_seed"], name
        lo, hi = m["gold"]["ci"]
        assert lo <= m["gold"]["mean"] <= hi
        assert 0.0 <= m["win"]["mean"] <= 1.0


def test_variants_table_claims_and_costs(variants):
    res = json.loads((variants / "results.json").read_text())
    _check_outputs(variants, res)
    expected = {"PPO", "RTO", "Semi-RTO", "DDPO", "RS-PPO", "DPO-only", "REINFORCE++", "RTO+REINFORCE++",
                "RTO+RLOO/token", "PPO+GRPO/seq"}  # fmt: skip
    assert expected | {"DPO (offline)", "SFT"} == set(res["methods"])
    m = res["methods"]
    assert m["SFT"]["win"]["mean"] == pytest.approx(0.5)  # SFT against its own samples: all ties
    for name in expected:
        assert m[name]["time_per_iteration"]["total"] > 0
    assert m["RTO"]["passes_per_iteration"]["scoring_forwards"]["dpo"] == 1
    assert m["PPO"]["passes_per_iteration"]["scoring_forwards"]["dpo"] == 0
    assert m["REINFORCE++"]["passes_per_iteration"]["scoring_forwards"]["critic"] == 0
    for name in ("RTO+RLOO/token", "PPO+GRPO/seq"):  # no critic; K = 4 responses of a quarter of the prompts
        pp = m[name]["passes_per_iteration"]
        assert pp["scoring_forwards"]["critic"] == 0 and pp["optimizer_steps"] == m["REINFORCE++"][
            "passes_per_iteration"]["optimizer_steps"]  # fmt: skip
    for c in res["claims"]:
        assert c["status"] in ("holds", "not shown", "contradicted") and c["single_seed"]
    assert res["cells_cpu_s"] > 0 and m["RTO"]["cpu_s_per_run"] > 0
    claims = {c["claim"] for c in res["claims"]}
    assert any("Semi-RTO > DDPO" in c for c in claims) and any("RS-PPO" in c for c in claims)
    text = (variants / "summary.md").read_text()
    assert "one seed" in text and "RTO+REINFORCE++" in text


def test_resume_recomputes_only_the_missing_cell(variants):
    n = len(computed_log(variants))
    assert n == 14  # 2 preference models + 10 RL runs + offline DPO + SFT
    victim = next(
        c for c in (variants / "cells").iterdir() if json.loads((c / "spec.json").read_text())["kind"] == "rl"
    )
    (victim / "result.json").unlink()
    run_experiment(ExperimentConfig(name="variants", preset="quick", out=str(variants)))
    log = computed_log(variants)
    assert [e["hash"] for e in log[n:]] == [victim.name]


def test_interrupted_cells_continue_their_checkpoints(variants, tmp_path, monkeypatch):
    """A cell's folder is named by its spec's hash, so checkpoints found there were left by the same cell
    when an experiment was interrupted: the trainers are asked to resume them instead of refusing the folder
    (the trainers' resume itself is tested bitwise in tests/reliability)."""
    import rto.trainers.ppo
    import rto.trainers.reward
    from rto.experiments import core

    seen = {}

    def capture(name):
        def fake(cfg, *args, **kwargs):
            seen[name] = cfg
            raise KeyboardInterrupt  # stop here: only the config is under test

        return fake

    monkeypatch.setattr(rto.trainers.ppo, "train_ppo", capture("rl"))
    monkeypatch.setattr(rto.trainers.reward, "train_reward", capture("rm"))
    specs = [json.loads((c / "spec.json").read_text()) for c in (variants / "cells").iterdir()]
    for kind, run in (("rl", core.run_rl_cell), ("pref", core.run_pref_cell)):
        spec = next(s for s in specs if s["kind"] == kind and s.get("model", "rm") == "rm")
        # what an interrupted run leaves: its checkpoints
        (
            variants
            / "cells"
            / f"interrupted-{kind}"
            / ("policy" if kind == "rl" else "model")
            / "checkpoints"
        ).mkdir(parents=True)
        with pytest.raises(KeyboardInterrupt):
            run(spec, variants / "cells" / f"interrupted-{kind}")
    for kind in ("rl", "pref"):  # the other tests read every cell folder
        shutil.rmtree(variants / "cells" / f"interrupted-{kind}", ignore_errors=True)
    assert seen["rl"].resume and seen["rl"].output_dir == str(
        variants / "cells" / "interrupted-rl" / "policy"
    )
    assert seen["rm"].resume


def test_data_scaling(root, variants):
    res, out = _with_world(root, variants, "data-scaling")
    _check_outputs(out, res)
    m = res["methods"]
    assert m["RTO @ 0.125"]["n_pairs"] < m["RTO @ 1"]["n_pairs"]
    assert m["RTO @ 0.125"]["n_pairs"] == m["PPO @ 0.125"]["n_pairs"]
    assert "plots/gold_vs_data.png" in res["plots"]
    assert any("reaches PPO" in c["claim"] for c in res["claims"])
    assert not any(e.get("kind") in ("data",) for e in computed_log(out))


def test_data_scaling_with_constant_pref_steps(root, variants):
    """--pref-budget steps: a fraction's reward/DPO models get as many optimizer steps as on all pairs
    (more epochs); the full-data cells are the same as with the default budget."""
    out = root / "data-scaling-steps"
    shutil.copytree(variants / "world", out / "world")
    run_experiment(ExperimentConfig(name="data-scaling", preset="quick", out=str(out), pref_budget="steps"))
    specs = {c.name: json.loads((c / "spec.json").read_text()) for c in (out / "cells").iterdir()}
    pref = {(s["model"], s["fraction"]): h for h, s in specs.items() if s["kind"] == "pref"}
    for model in ("rm", "dpo"):
        small, full = (out / "cells" / pref[(model, f)] / "model" / "metrics.jsonl" for f in (0.125, 1.0))
        steps = [len(p.read_text().splitlines()) for p in (small, full)]
        assert steps[0] == steps[1] > 1, (model, steps)
        assert (
            specs[pref[(model, 0.125)]]["constant_steps"]
            and "constant_steps" not in specs[pref[(model, 1.0)]]
        )
    assert "same number of optimizer steps" in (out / "summary.md").read_text()


def test_sweep_one_heatmap_per_pair(root, variants):
    res, out = _with_world(root, variants, "sweep")
    _check_outputs(out, res)
    for pair in ("beta1_beta2", "beta1_beta3", "beta2_beta3"):
        assert f"plots/heatmap_{pair}.png" in res["plots"]
    assert len([k for k in res["methods"] if k.startswith("b1=")]) == 7  # cube corners touching the centre
    assert res["methods"]["clip=0.02"]["dpo_reward_clip"] == 0.02


def test_token_sources(root, variants):
    res, out = _with_world(root, variants, "token-sources")
    _check_outputs(out, res)
    for loss in ("sigmoid", "ipo", "simpo", "rdpo", "tdpo"):
        assert f"RTO [{loss}]" in res["methods"] and f"offline {loss}" in res["methods"]
    assert res["methods"]["RTO [simpo]"]["beta"] == 2.0


def test_bad_name_is_a_config_error():
    with pytest.raises(ConfigError, match="name"):
        resolve(ExperimentConfig(name="nope", preset="quick", out="x"))  # type: ignore[arg-type]


def test_frontier_plumbing(root, variants):
    """The frontier experiment end to end at the quick preset: trajectories from checkpoints, every
    method's points, the matched-KL rows, the fits and the plots (numbers mean nothing at this size)."""
    out = root / "frontier"
    # --reuse-from: the variants run's world and its reward and DPO models are taken, not computed again
    run_experiment(ExperimentConfig(name="frontier", preset="quick", out=str(out), reuse_from=str(variants)))
    res = json.loads((out / "results.json").read_text())
    assert world_fingerprint(out) == world_fingerprint(variants)
    shared = {e["hash"] for e in computed_log(variants) if e["kind"] == "pref"}
    assert len(shared) == 2 and all((out / "cells" / h / "result.json").is_file() for h in shared)
    computed_prefs = [e["hash"] for e in computed_log(out) if e["kind"] == "pref"]
    assert len(computed_prefs) == 1 and not shared & set(computed_prefs)  # only DPO at beta 1 is new
    assert res["experiment"] == "frontier"
    rl = [p for p in res["points"] if p["method"] in ("PPO", "RTO")]
    assert {(p["method"], p["beta2"]) for p in rl} == {(m, b) for m in ("PPO", "RTO") for b in (0.01, 0.2)}
    # each run: SFT (KL 0), the checkpoint after iteration 1, the final policy after iteration 2
    assert sorted(p["iteration"] for p in rl if p["method"] == "RTO" and p["beta2"] == 0.2) == [0, 1, 2]
    assert all(p["kl"] == 0.0 for p in rl if p["iteration"] == 0)
    assert all(p["gold"] == pytest.approx(res["sft"]["gold"]) for p in rl if p["iteration"] == 0)
    bon = sorted((p["coord"], p["kl"]) for p in res["points"] if p["method"] == "best-of-N")
    assert [n for n, _ in bon] == [1, 2, 4]
    assert bon[2][1] == pytest.approx(math.log(4) - 3 / 4)
    assert {p["coord"] for p in res["points"] if p["method"] == "DPO"} == {0.1, 1.0}
    assert [r["kl"] for r in res["matched"]] == [0.01, 2.0]
    for r in res["matched"]:
        assert r["verdict"] in ("RTO > PPO", "PPO > RTO", "not resolved") or r["verdict"].startswith(
            "out of range"
        )
    for fam in ("PPO", "RTO", "best-of-N"):
        assert set(res["fits"][fam]) >= {"gold", "proxy", "max_kl", "reading"}
    assert {"plots/frontier.png", "plots/overopt.png"} <= set(res["plots"])
    for p in res["plots"]:
        assert (out / p).stat().st_size > 1000
    text = (out / "summary.md").read_text()
    assert "RTO vs PPO at equal KL" in text and "Gao" in text
    # checkpoints are measured, then removed; a rerun computes nothing
    assert not list((out / "cells").glob("*/policy/checkpoints/step-*"))
    n = len(computed_log(out))
    run_experiment(ExperimentConfig(name="frontier", preset="quick", out=str(out)))
    assert len(computed_log(out)) == n


def test_group_rows_keep_the_budget_and_only_restricts_the_plan(tmp_path):
    cfg, dcfg, preset = resolve(ExperimentConfig(name="variants", preset="default", out=str(tmp_path)))
    demo = core.demo_spec(dcfg)
    p = plan(cfg, demo, preset)
    assert set(GROUP_VARIANTS) <= set(p.methods) and len(GROUP_VARIANTS) == 8
    for name, (mode, adv, level) in GROUP_VARIANTS.items():
        spec = p.methods[name][0]
        assert (spec["mode"], spec["advantage"], spec["overrides"]["baseline_level"]) == (mode, adv, level)
        # as many responses per iteration as the other rows: rollout_batch_size / K prompts x K samples
        over = spec["overrides"]
        assert over["num_samples_per_prompt"] == GROUP_K
        assert over["rollout_batch_size"] * GROUP_K == demo["rollout_batch_size"]
    assert "overrides" in p.methods["RTO"][0] and p.methods["RTO"][0]["overrides"] == {}  # old rows unchanged
    only = restrict(p, "RTO+RLOO/token, PPO+GRPO/seq")
    assert list(only.methods) == ["RTO+RLOO/token", "PPO+GRPO/seq"] and len(only.prefs) == 2
    assert restrict(p, "SFT").prefs == []
    with pytest.raises(ConfigError, match=r"field 'only': no method 'RTO\+PPO'"):
        restrict(p, "RTO+PPO")
