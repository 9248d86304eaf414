"""`rto bench`: a smoke run on the smallest shapes, the JSON it writes, and the trl-absent path."""

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from rto import bench
from rto.errors import ConfigError, RtoError
from rto.trainers.timing import PeakMemory, PhaseTimer, patched

PHASES = {"generation", "score", "score.policy", "score.ref", "score.critic", "score.rm", "score.other", "targets",
          "train", "other"}  # fmt: skip
MAY_BE_ZERO = {"score.other", "other"}  # bookkeeping remainders: >= 0


def _positive_finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One warm-up and one measured iteration per mode, TRL compare requested but made absent."""
    out = tmp_path_factory.mktemp("bench")
    cfg = bench.BenchConfig(
        model_size="micro", vocab_size=300, rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4,
        prompt_length=4, iterations=1, warmup_iterations=1, threads=1, compare="trl",
        json_out=str(out / "bench.json"), work_dir=str(out / "world"),
    )  # fmt: skip
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(bench.trl, "_trl_ppo", lambda: None)
    try:
        result = bench.run_bench(cfg)
    finally:
        mp.undo()
    assert torch.get_num_threads() == threads  # run_bench leaves the process's thread count alone
    return result, json.loads((out / "bench.json").read_text())


def test_json_has_every_field_finite_and_positive(smoke):
    result, data = smoke
    assert data["config"]["model_size"] == "micro"
    assert data["shapes"] == {
        "batch": 4,
        "prompt_tokens": 4,
        "max_new_tokens": 4,
        "mini_batch": 2,
        "ppo_epochs": 1,
    }
    assert data["model"]["params"] > 0 and data["model"]["vocab"] <= 300
    assert set(data["modes"]) == {"ppo", "rto"}
    for mode, m in data["modes"].items():
        expected = PHASES | ({"score.dpo"} if mode == "rto" else set())
        assert set(m["phases_s"]) == expected, mode
        for name, v in m["phases_s"].items():
            assert math.isfinite(v) and (v >= 0 if name in MAY_BE_ZERO else v > 0), (mode, name, v)
        assert set(m["tokens_per_s"]) == {"iteration", "generation", "targets", "train"} | {
            p for p in expected if p.startswith("score.") and p != "score.other"
        }
        floor_keys = {"generation", "score", "train", "total"} | {
            p for p in expected if p.startswith("score.")
        } - {"score.other"}
        assert set(m["floor_s"]) == floor_keys
        for group in ("tokens_per_s", "floor_s", "phase_over_floor"):
            assert all(_positive_finite(v) for v in m[group].values()), (mode, group, m[group])
        for key in ("iteration_s", "iteration_over_floor", "response_tokens", "sequence_tokens", "generated_steps",
                    "model_and_optimizer_mb"):  # fmt: skip
            assert _positive_finite(m[key]), (mode, key)
        assert _positive_finite(m["peak_memory_mb"]["rss_mb"])
        assert all(_positive_finite(v) for v in m["cpu_s"].values()) and _positive_finite(
            m["iteration_over_floor_cpu"]
        )
        assert len(m["iteration_s_each"]) == 1 and m["iteration_s_stdev"] == 0.0
        # the score is the sum of its passes plus a non-negative remainder, the iteration of its phases
        parts = sum(v for k, v in m["phases_s"].items() if k.startswith("score."))
        assert parts == pytest.approx(m["phases_s"]["score"], rel=1e-9)
        assert m["response_tokens"] == 4 * m["generated_steps"] or m["response_tokens"] <= 4 * 4
    assert all(_positive_finite(v) for v in data["ratios"].values())
    assert all(_positive_finite(v) for v in data["ratios_cpu"].values())
    assert all(_positive_finite(v) for v in data["ratios_from_phase_sums"].values())
    assert data["checks"]["generation_stops_when_all_ended"] is True
    assert data["checks"]["scoring_under_inference_mode"] is True
    assert data["checks"]["tokenizer_calls_in_hot_path"] == 0
    assert json.loads(json.dumps(result)) == data


def test_ratios_are_quotients_of_the_reported_times(smoke):
    _, data = smoke
    ppo, rto = data["modes"]["ppo"], data["modes"]["rto"]
    r = data["ratios"]
    assert r["rto_over_ppo"] == pytest.approx(rto["iteration_s"] / ppo["iteration_s"], rel=1e-12)
    assert r["ppo_iteration_over_floor"] == pytest.approx(
        ppo["iteration_s"] / ppo["floor_s"]["total"], rel=1e-12
    )
    assert r["rto_iteration_over_floor"] == pytest.approx(
        rto["iteration_s"] / rto["floor_s"]["total"], rel=1e-12
    )
    for m in (ppo, rto):
        f = m["floor_s"]
        assert f["total"] == pytest.approx(f["generation"] + f["score"] + f["train"], rel=1e-9)
        assert m["phase_over_floor"]["train"] == pytest.approx(m["phases_s"]["train"] / f["train"], rel=1e-12)
        assert m["tokens_per_s"]["iteration"] == pytest.approx(
            m["response_tokens"] / m["iteration_s"], rel=1e-12
        )
    assert data["dpo_pass_over_ppo_iteration"] == pytest.approx(
        rto["phases_s"]["score.dpo"] / ppo["iteration_s"]
    )
    rs = data["ratios_from_phase_sums"]
    for m in (ppo, rto):
        ph, fl = m["phases_s"], m["floor_s"]
        assert m["phase_sum_s"] == pytest.approx(ph["generation"] + ph["score"] + ph["targets"] + ph["train"])
        assert m["floor_phase_sum_s"] == pytest.approx(fl["generation"] + fl["score"] + fl["train"])
    assert rs["rto_over_ppo"] == pytest.approx(rto["phase_sum_s"] / ppo["phase_sum_s"], rel=1e-12)
    assert rs["rto_iteration_over_floor"] == pytest.approx(rto["phase_sum_s"] / rto["floor_phase_sum_s"])
    rc = data["ratios_cpu"]
    assert rc["rto_over_ppo"] == pytest.approx(
        rto["cpu_s"]["iteration"] / ppo["cpu_s"]["iteration"], rel=1e-12
    )
    assert rc["ppo_iteration_over_floor"] == pytest.approx(ppo["cpu_s"]["iteration"] / ppo["cpu_s"]["floor"])
    assert data["ratios_per_round"]["rto_over_ppo"] == pytest.approx(
        [rto["iteration_s_each"][0] / ppo["iteration_s_each"][0]]
    )
    by_name = {t["name"]: t for t in data["targets"]}
    t = by_name["RTO iteration / PPO iteration"]
    assert t["value"] == r["rto_over_ppo"] and t["limit"] == 1.10
    assert t["met"] == (t["value"] <= 1.10)
    assert t["over_by_pct"] == pytest.approx(max(0.0, (t["value"] / 1.10 - 1) * 100))


def test_trl_absent_is_skipped_with_a_clear_message(smoke, capsys):
    result, data = smoke
    assert data["compare"]["trl"] == {"skipped": bench.trl.TRL_MISSING}
    assert "trl <= 1.12.0" in bench.trl.TRL_MISSING and "not an rto dependency" in bench.trl.TRL_MISSING
    assert bench.trl.TRL_MISSING in bench.format_table(result)


def test_trl_lookup_returns_none_when_the_package_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    assert bench.trl._trl_ppo() is None


def test_table_names_phases_and_unmet_targets(smoke):
    result, _ = smoke
    table = bench.format_table(result)
    for word in ("iteration", "generation", "score.dpo", "train", "RTO iteration / PPO iteration", "checks:"):
        assert word in table
    fake = {**result, "targets": [bench.target("RTO iteration / PPO iteration", 1.32, 1.10)]}
    assert "NOT met, over by 20.0%" in bench.format_table(fake)


def test_instrumentation_check_names_the_missing_pass():
    run = bench._Run("rto", None)
    timer = PhaseTimer()
    for p in ("policy", "ref", "critic", "rm"):
        timer.calls[f"score.{p}"] = 1
    with pytest.raises(RtoError, match="dpo"):
        bench._check_instrumentation(run, timer)
    timer.calls["score.dpo"] = 1
    bench._check_instrumentation(run, timer)


def test_bad_config_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        bench._validate(bench.BenchConfig(rollout_batch_size=6, mini_batch_size=4))
    with pytest.raises(ConfigError, match="iterations"):
        bench._validate(bench.BenchConfig(iterations=0))


def test_phase_timer_accumulates_nested_phases():
    timer = PhaseTimer()
    for _ in range(3):
        with timer.phase("a"), timer.phase("b"):
            pass
    assert timer.calls == {"a": 3, "b": 3} and timer.seconds["a"] >= timer.seconds["b"] >= 0


def test_patched_restores_the_attribute():
    class Owner:
        value = 1

    with patched(Owner, "value", 2):
        assert Owner.value == 2
    assert Owner.value == 1


def test_peak_memory_sees_a_large_allocation():
    mem = PeakMemory()
    mem.reset()
    before = mem.read()["rss_mb"]
    x = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    after = mem.read()["rss_mb"]
    del x
    assert after >= before + (60 if mem.resettable else 0)


def _record(scale: float, with_dpo: bool) -> dict[str, float]:
    passes = ["policy", "ref", "critic", "rm"] + (["dpo"] if with_dpo else [])
    rec = {f"t.score.{p}": 0.1 * scale for p in passes}
    rec.update({f"t.floor.{p}": 0.09 * scale for p in passes})
    rec.update({"t.generation": 1.0 * scale, "t.score": 0.1 * scale * len(passes) + 0.01, "t.targets": 0.01,
                "t.train": 2.0 * scale, "t.floor.generation": 0.9 * scale, "t.floor.train": 1.9 * scale})  # fmt: skip
    rec["t.iteration"] = rec["t.generation"] + rec["t.score"] + rec["t.targets"] + rec["t.train"] + 0.001
    rec.update({"c.iteration": 2 * rec["t.iteration"], "c.floor.generation": 1.0, "c.floor.train": 2.0})
    rec.update({"n.response_tokens": 100.0, "n.sequence_tokens": 150.0, "n.generated_steps": 5.0})
    return rec


@pytest.mark.parametrize("how", ["median", "mean", "min"])
def test_summary_statistic_is_applied_per_column_and_consistent(how):
    tiny = SimpleNamespace(model=torch.nn.Linear(2, 2))
    scorers = SimpleNamespace(policy=tiny, critic=tiny, frozen_roles=lambda: [])
    no_state = SimpleNamespace(state={})
    ppo_run = SimpleNamespace(
        cfg=SimpleNamespace(ppo_epochs=2), scorers=scorers, actor_opt=no_state, critic_opt=no_state
    )
    run = bench._Run("rto", ppo_run)
    run.records = [_record(s, True) for s in (1.0, 3.0, 1.5)]
    s = bench.summarize_mode(run, how)
    pick = {"median": lambda xs: sorted(xs)[1], "mean": lambda xs: sum(xs) / 3, "min": min}[how]
    iters = [r["t.iteration"] for r in run.records]
    assert s["iteration_s"] == pytest.approx(pick(iters))
    assert s["phases_s"]["generation"] == pytest.approx(pick([1.0, 3.0, 1.5]))
    assert s["phases_s"]["score.other"] == pytest.approx(0.01)
    assert s["phases_s"]["other"] == pytest.approx(0.001)
    floors = [0.9 * x + 1.9 * x + 5 * 0.09 * x for x in (1.0, 3.0, 1.5)]
    assert s["floor_s"]["total"] == pytest.approx(pick(floors))
    assert s["iteration_over_floor"] == pytest.approx(s["iteration_s"] / s["floor_s"]["total"])
    assert s["tokens_per_s"]["train"] == pytest.approx(150.0 * 2 / s["phases_s"]["train"])


def test_estimators_on_the_same_shapes(tmp_path):
    cfg = bench.BenchConfig(
        model_size="micro", vocab_size=300, rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4,
        prompt_length=4, iterations=1, warmup_iterations=0, threads=1, estimators="gae,grpo,rloo", group_size=2,
        json_out=str(tmp_path / "est.json"), work_dir=str(tmp_path / "world"),
    )  # fmt: skip
    bench.run_bench(cfg)
    data = json.loads((tmp_path / "est.json").read_text())
    est = data["estimators"]
    assert list(est) == ["gae", "grpo", "rloo"]
    for name, e in est.items():
        assert e["responses_per_iteration"] == 4, name  # the same shapes for every estimator
        assert e["prompts_per_iteration"] == (4 if name == "gae" else 2), name
        assert e["critic"] == (name == "gae")
        assert _positive_finite(e["iteration_s"]) and all(_positive_finite(v) for v in e["phases_s"].values())
        assert _positive_finite(e["iteration_cpu_s"])
    assert est["gae"]["over_gae"] == 1.0 and _positive_finite(est["rloo"]["over_gae"])
    assert est["gae"]["over_gae_cpu"] == 1.0 and _positive_finite(est["grpo"]["over_gae_cpu"])


def test_estimators_are_validated():
    with pytest.raises(ConfigError, match="field 'estimators': unknown 'ppo'"):
        bench._validate(bench.BenchConfig(estimators="gae,ppo"))
    with pytest.raises(ConfigError, match="field 'group_size' must be >= 2"):
        bench._validate(bench.BenchConfig(estimators="grpo", group_size=1))
