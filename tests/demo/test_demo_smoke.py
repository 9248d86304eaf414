"""`rto demo` end to end at the smallest preset, the plug-in gold reward through `rto demo`, `rto label`
and `rto eval`, and the pieces of the demo that have a hand-checkable answer."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from rto.cli import main
from rto.demo import DemoConfig, resolve, run_demo
from rto.errors import ConfigError
from rto.report.tables import fmt
from rto.stages import dpo_token_rewards, split_prompts

PLUGIN_GOLD = '''
def gold(prompts, responses):
    """Fraction of the letter 'e' among the response's letters: deterministic and easy to recompute."""
    out = []
    for r in responses:
        letters = [c for c in r.lower() if c.isalpha()]
        out.append(letters.count("e") / len(letters) if letters else -1.0)
    return out
'''


def plugin_gold(responses):
    out = []
    for r in responses:
        letters = [c for c in r.lower() if c.isalpha()]
        out.append(letters.count("e") / len(letters) if letters else -1.0)
    return out


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _all_numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _all_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    run_demo(DemoConfig(out=str(out), preset="test", progress=False))
    return out


def test_demo_writes_every_output(demo_run):
    out = demo_run
    for rel in [
        "rto_config.yaml", "data/sft.jsonl", "data/prompts_train.jsonl", "data/prompts_eval.jsonl",
        "data/labels/preferences.jsonl", "data/labels/preferences.gold.jsonl", "data/labels/heldout_pairs.jsonl",
        "data/labels/label_stats.json", "sft/model.safetensors", "rm/model.safetensors", "dpo/model.safetensors",
        "ppo-seed0/model.safetensors", "ppo-seed0/metrics.jsonl", "rto-seed0/model.safetensors",
        "rto-seed0/metrics.jsonl", "eval/eval.json", "eval/samples.jsonl", "eval/heldout_pairs_scored.jsonl",
        "report.md", "report.json", "plots/gold_vs_iteration.png", "plots/gold_vs_kl.png",
        "plots/token_rewards.png", "plots/token_rewards.html", "plots/dpo_reward_hist.png", "plots/lengths.png",
    ]:  # fmt: skip
        assert (out / rel).is_file(), rel
        assert (out / rel).stat().st_size > 0, rel
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_report_fields_are_present_and_finite(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    assert report["verdict"] in ("RTO > PPO", "PPO > RTO", "no significant difference")
    assert set(report["results"]) == {"sft", "best-of-4", "dpo", "ppo", "rto"}
    for name, r in report["results"].items():
        for key in ("gold_mean", "gold_ci", "win_rate", "kl_mean", "length_mean", "eos_rate"):
            assert key in r, (name, key)
        assert r["gold_ci"][0] <= r["gold_mean"] <= r["gold_ci"][1], name
        assert -1.0 <= r["gold_mean"] <= 1.0
    for name in ("sft", "dpo", "best-of-4"):
        for key in ("distinct_1", "distinct_2", "rm_score_normalized_mean"):
            assert key in report["results"][name], (name, key)
    assert report["results"]["sft"]["kl_mean"] == 0.0 and report["results"]["sft"]["win_rate"] == 0.5
    assert "RTO - PPO" in report["comparisons"]
    for path, v in _all_numbers(
        {k: report[k] for k in ("results", "comparisons", "per_seed", "curves", "run")}
    ):
        assert math.isfinite(v), path
    for method in ("ppo", "rto"):
        assert len(report["curves"][method]["gold_per_seed"][0]) == 2  # test preset: 2 iterations
    md = (demo_run / "report.md").read_text()
    assert report["verdict_sentence"] in md
    assert "| RTO (1 seed) |" in md and "| DPO |" in md
    for name, r in report["results"].items():
        assert fmt(r["gold_mean"], "+.3f") in md, name  # the table's numbers come from report.json
    assert "(preset test)" in md and "`rto demo --preset test`" in md
    assert "1 seeds" not in md and "seed(s)" not in md and "-0.000" not in md and "-0.00 " not in md
    assert "VADER compound" in md  # the gold that was used (the test preset's default)
    lr = report["learned_rewards_heldout"]
    below = [k for k in ("rm_accuracy_vs_gold", "dpo_accuracy_vs_gold") if lr[k] < 0.5]
    assert len(report["warnings"]) == len(below) and all(w in md for w in report["warnings"])


def test_demo_data_is_disjoint_and_labels_hold_no_gold(demo_run):
    data = demo_run / "data"
    train = {r["prompt"] for r in _read_jsonl(data / "prompts_train.jsonl")}
    held_out = [r["prompt"] for r in _read_jsonl(data / "prompts_eval.jsonl")]
    assert len(held_out) == len(set(held_out)) == 12
    assert not train & set(held_out)
    rows = _read_jsonl(data / "labels" / "preferences.jsonl")
    gold = _read_jsonl(data / "labels" / "preferences.gold.jsonl")
    assert rows and len(rows) == len(gold)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert all(r["prompt"] in train for r in rows)
    metrics = _read_jsonl(demo_run / "rto-seed0" / "metrics.jsonl")
    assert all("gold" in m and -1.0 <= m["gold"] <= 1.0 for m in metrics)


def test_plugin_gold_through_demo(demo_run, tmp_path, monkeypatch):
    """A module:function gold reward: labelling, the PPO gold curve and evaluation all use it, also in the
    worker processes. The SFT stage is reused from the vader run (its settings do not involve the gold
    reward)."""
    (tmp_path / "my_gold_mod.py").write_text(PLUGIN_GOLD)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    for sub in ("data", "init", "sft", "rto_config.yaml"):
        src = demo_run / sub
        (shutil.copytree(src, out / sub) if src.is_dir() else shutil.copy(src, out / sub))
    shutil.rmtree(out / "data" / "labels")
    # workers=2: the RM/DPO and PPO/RTO stages run in child processes, which must find the plug-in module
    cfg = DemoConfig(
        out=str(out), preset="test", gold_reward="my_gold_mod:gold", reuse=True, progress=False, workers=2
    )
    run_demo(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["eval_settings"]["gold_reward"] == "my_gold_mod:gold"
    samples = _read_jsonl(out / "eval" / "samples.jsonl")
    assert samples
    assert [s["gold"] for s in samples] == pytest.approx(plugin_gold([s["response"] for s in samples]))
    pairs = _read_jsonl(out / "data" / "labels" / "preferences.jsonl")
    gold = _read_jsonl(out / "data" / "labels" / "preferences.gold.jsonl")
    assert [g["chosen_gold"] for g in gold] == pytest.approx(plugin_gold([p["chosen"] for p in pairs]))
    metrics = _read_jsonl(out / "ppo-seed0" / "metrics.jsonl")
    assert all(0.0 <= m["gold"] <= 1.0 or m["gold"] == -1.0 for m in metrics)
    assert (out / "ppo-seed0.log").is_file() and (out / "rm.log").is_file()  # ran as worker processes
    assert set(report["run"]["reused_stages"]) == {"data", "model", "sft"}


def test_label_command_with_a_gold_file(demo_run, tmp_path):
    gold_file = tmp_path / "scorer.py"
    gold_file.write_text(PLUGIN_GOLD)
    out = tmp_path / "labels" / "prefs.jsonl"
    rc = main([
        "label", "--prompts", str(demo_run / "data" / "prompts_eval.jsonl"), "--policy", str(demo_run / "sft"),
        "--gold-reward", f"{gold_file}:gold", "--num-samples-per-prompt", "4", "--tau", "0.05", "--out", str(out),
        "--max-new-tokens", "12", "--seed", "3",
    ])  # fmt: skip
    assert rc == 0
    rows = _read_jsonl(out)
    side = _read_jsonl(tmp_path / "labels" / "prefs.gold.jsonl")
    assert 0 < len(rows) <= 24 and len(side) == len(rows)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert [s["row"] for s in side] == list(range(len(rows)))
    assert [s["chosen_gold"] for s in side] == pytest.approx(plugin_gold([r["chosen"] for r in rows]))
    assert [s["rejected_gold"] for s in side] == pytest.approx(plugin_gold([r["rejected"] for r in rows]))
    for s in side:
        p = 1 / (1 + math.exp(-(s["chosen_gold"] - s["rejected_gold"]) / 0.05))
        assert s["p_chosen"] == pytest.approx(p)


def test_label_command_reports_a_bad_gold_spec(demo_run, tmp_path, capsys):
    rc = main([
        "label", "--prompts", str(demo_run / "data" / "prompts_eval.jsonl"), "--policy", str(demo_run / "sft"),
        "--gold-reward", "no_such_module_xyz:fn", "--out", str(tmp_path / "x.jsonl"),
    ])  # fmt: skip
    assert rc == 2
    assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err


def test_eval_command(demo_run, tmp_path):
    rc = main([
        "eval", "--policies", f"sft={demo_run / 'sft'}", f"dpo={demo_run / 'dpo'}",
        f"rto-seed0={demo_run / 'rto-seed0'}", f"rto-seed1={demo_run / 'rto-seed0'}",
        "--prompts", str(demo_run / "data" / "prompts_eval.jsonl"), "--ref-model", str(demo_run / "sft"),
        "--reward-model", str(demo_run / "rm"), "--best-of-n", "3", "--num-samples-per-prompt", "2", "--seeds", "2",
        "--max-new-tokens", "12", "--out", str(tmp_path / "ev"), "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["baseline"] == "sft"
    assert set(ev["policies"]) == {"sft", "dpo", "rto-seed0", "rto-seed1", "best-of-3"}
    sft = ev["policies"]["sft"]
    assert sft["n_samples"] == 12 * 2 * 2 and sft["kl_mean"] == 0.0
    # two copies of one model under two names: identical samples, so the group has no seed spread
    r0, r1 = ev["policies"]["rto-seed0"], ev["policies"]["rto-seed1"]
    assert r0["gold_mean"] == r1["gold_mean"] and r0["kl_mean"] == pytest.approx(r1["kl_mean"])
    assert ev["groups"]["rto"]["gold_per_seed"] == [r0["gold_mean"], r0["gold_mean"]]
    assert ev["policies"]["best-of-3"]["kl_mean"] == pytest.approx(math.log(3) - 2 / 3)
    assert ev["policies"]["best-of-3"]["gold_mean"] >= ev["policies"]["best-of-3"]["sampled_mean_gold"]
    samples = _read_jsonl(tmp_path / "ev" / "samples.jsonl")
    assert len(samples) == 4 * 12 * 2 * 2 + 12 * 2
    assert all(s["rm_score"] is not None for s in samples)


def test_resolve_fills_presets_and_checks_values():
    cfg = resolve(DemoConfig(preset="smoke", out="x"))
    assert cfg.size == "micro" and cfg.ppo_iterations == 10
    assert resolve(DemoConfig(preset="smoke", out="x", ppo_iterations=3)).ppo_iterations == 3
    assert resolve(DemoConfig(preset="test")).out.startswith("runs/demo-")
    with pytest.raises(ConfigError, match="rollout_batch_size"):
        resolve(DemoConfig(preset="test", out="x", rollout_batch_size=12, mini_batch_size=8))
    with pytest.raises(ConfigError, match="seeds"):
        resolve(DemoConfig(preset="test", out="x", seeds=0))


def test_split_prompts_disjoint_and_deterministic():
    train, held = split_prompts(500, 40, seed=3)
    assert len(train) == 500 and len(held) == len(set(held)) == 40
    assert not set(train) & set(held)
    assert split_prompts(500, 40, seed=3) == (train, held)


def test_dpo_token_rewards_match_a_naive_loop(tiny_tokenizer):
    from tests.conftest import make_tiny_gpt2

    ref, dpo = make_tiny_gpt2(tiny_tokenizer, seed=0), make_tiny_gpt2(tiny_tokenizer, seed=1)
    ref.eval(), dpo.eval()
    prompts, responses = ["The movie", "I hated"], [" was great.", " the plot, it was awful and boring."]
    got = dpo_token_rewards(dpo, ref, tiny_tokenizer, prompts, responses, beta=0.1)
    for p, r, g in zip(prompts, responses, got):
        p_ids = tiny_tokenizer(p)["input_ids"]
        r_ids = tiny_tokenizer(r)["input_ids"] + [tiny_tokenizer.eos_token_id]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            lp_d = torch.log_softmax(dpo(ids).logits[0], -1)
            lp_r = torch.log_softmax(ref(ids).logits[0], -1)
        expected = [
            0.1 * float(lp_d[len(p_ids) + h - 1, t] - lp_r[len(p_ids) + h - 1, t])
            for h, t in enumerate(r_ids)
        ]
        assert g["rewards"] == pytest.approx(expected, abs=1e-5)
        assert g["total"] == pytest.approx(sum(expected), abs=1e-5)
        assert "".join(g["tokens"][:-1]) == r and len(g["tokens"]) == len(r_ids)
    assert np.isfinite([x for g in got for x in g["rewards"]]).all()


def test_default_yaml_matches_the_default_preset():
    from pathlib import Path

    from rto.cli import parse_config

    path = Path(__file__).resolve().parents[2] / "configs" / "demo" / "default.yaml"
    cfg = parse_config(DemoConfig, ["--config", str(path), "--out", "x"], prog="rto demo")
    assert resolve(cfg) == resolve(DemoConfig(out="x"))
    cfg = parse_config(
        DemoConfig, ["--config", str(path), "--out", "x", "--actor-lr", "1e-4"], prog="rto demo"
    )
    assert cfg.actor_lr == 1e-4 and cfg.seeds == 2
