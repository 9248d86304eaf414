"""Cell hashing, caching and resume; seed aggregation; pass counting; per-iteration times."""

import json
import textwrap

import numpy as np
import pytest

from rto.experiments.cells import cell_dir, cell_hash, computed_log, run_cells
from rto.experiments.cost import passes_per_iteration, time_per_iteration
from rto.stats import aggregate, compare

TOY = """
def square(spec, folder):
    (folder / "artifact.txt").write_text(str(spec["x"]))
    return {"y": spec["x"] ** 2}
"""


@pytest.fixture
def toy_func(tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "toy_cells.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(mod))
    return "toy_cells:square"


def test_hash_ignores_key_order_and_sees_every_value():
    a = {"kind": "rl", "seed": 0, "overrides": {"beta1": 0.1, "beta2": 0.01}}
    b = {"overrides": {"beta2": 0.01, "beta1": 0.1}, "seed": 0, "kind": "rl"}
    assert cell_hash(a) == cell_hash(b)
    assert len(cell_hash(a)) == 16
    assert cell_hash({**a, "seed": 1}) != cell_hash(a)
    assert cell_hash({**a, "overrides": {"beta1": 0.1, "beta2": 0.02}}) != cell_hash(a)


def test_cells_are_cached_and_resume_recomputes_only_missing(tmp_path, toy_func):
    out = tmp_path / "exp"
    specs = [{"x": x} for x in range(4)] + [{"x": 2}]  # a duplicate is computed once
    res = run_cells(out, specs, toy_func)
    assert [r["y"] for r in res] == [0, 1, 4, 9, 4]
    assert len(computed_log(out)) == 4
    for s in specs:
        assert (cell_dir(out, s) / "artifact.txt").read_text() == str(s["x"])
        assert json.loads((cell_dir(out, s) / "spec.json").read_text()) == s
    # no stray temporary files from the atomic write
    assert not list((out / "cells").rglob("*.tmp"))

    run_cells(out, specs, toy_func)  # everything cached: nothing computed
    assert len(computed_log(out)) == 4

    (cell_dir(out, {"x": 3}) / "result.json").unlink()  # an interrupted cell
    (cell_dir(out, {"x": 1}) / "result.json").write_text('{"y": 1')  # a torn write
    res = run_cells(out, specs, toy_func)
    log = computed_log(out)
    assert len(log) == 6
    assert {e["hash"] for e in log[4:]} == {cell_hash({"x": 3}), cell_hash({"x": 1})}
    assert [r["y"] for r in res] == [0, 1, 4, 9, 4]


def _cell(gold, win=None, kl=None, length=None):
    n = len(gold)
    return {
        "per_prompt": {
            "gold": gold,
            "win": win or [0.5] * n,
            "kl": kl or [0.0] * n,
            "length": length or [10.0] * n,
        }
    }


def test_aggregate_one_seed_is_labelled_and_mean_is_exact():
    agg = aggregate([_cell([1.0, 2.0, 3.0], length=[4.0, 6.0, 8.0])])
    assert agg["single_seed"] and agg["n_seeds"] == 1
    assert agg["gold"]["mean"] == pytest.approx(2.0)
    lo, hi = agg["gold"]["ci"]
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0
    assert agg["length"]["mean"] == pytest.approx(6.0)


def test_aggregate_over_seeds_mean_per_seed_and_interval():
    cells = [_cell([0.0, 0.2]), _cell([1.0, 1.2]), _cell([2.0, 2.2])]
    agg = aggregate(cells)
    assert not agg["single_seed"] and agg["n_seeds"] == 3
    assert agg["gold"]["per_seed"] == pytest.approx([0.1, 1.1, 2.1])
    assert agg["gold"]["mean"] == pytest.approx(1.1)
    lo, hi = agg["gold"]["ci"]
    # seeds dominate the spread: the interval is wide, inside the range of the per-seed means +- prompts
    assert lo < 0.8 and hi > 1.4 and lo >= 0.0 and hi <= 2.2
    # identical cells: zero-width interval
    same = aggregate([_cell([1.0, 1.0])] * 3)
    assert same["gold"]["ci"] == pytest.approx([1.0, 1.0])


def test_compare_verdicts():
    rng = np.random.default_rng(0)
    base = rng.normal(size=50).tolist()
    better = [x + 1.0 for x in base]
    c = compare([_cell(better)], [_cell(base)], "A", "B")
    assert c["diff"] == pytest.approx(1.0) and c["ci"][0] == pytest.approx(1.0)
    assert c["verdict"] == "A > B" and c["single_seed"]
    c = compare([_cell(base)], [_cell(base)], "A", "B")
    assert c["verdict"] == "no significant difference"


@pytest.mark.parametrize(
    "mode,adv,scoring,fwd_eq",
    [
        ("ppo", "gae", {"policy": 1, "reference": 1, "dpo": 0, "critic": 1, "reward_model": 1}, 4 + 2 + 4),
        ("rto", "gae", {"policy": 1, "reference": 1, "dpo": 1, "critic": 1, "reward_model": 1}, 5 + 2 + 4),
        (
            "rto",
            "reinforce++",
            {"policy": 1, "reference": 1, "dpo": 1, "critic": 0, "reward_model": 1},
            4 + 1 + 2,
        ),
        (
            "ppo",
            "reinforce++",
            {"policy": 1, "reference": 1, "dpo": 0, "critic": 0, "reward_model": 1},
            3 + 1 + 2,
        ),
        (
            "dpo-only",
            "gae",
            {"policy": 1, "reference": 1, "dpo": 1, "critic": 1, "reward_model": 0},
            4 + 2 + 4,
        ),
    ],
)
def test_pass_counts(mode, adv, scoring, fwd_eq):
    p = passes_per_iteration(
        mode, adv, ppo_epochs=1, rollout_batch_size=64, mini_batch_size=16, max_new_tokens=48
    )
    assert p["scoring_forwards"] == scoring
    assert p["forward_equivalents"] == fwd_eq
    assert p["generation_token_forwards"] == 48
    assert p["optimizer_steps"] == 4 * (2 if adv == "gae" else 1)


def test_pass_counts_scale_with_epochs():
    p1 = passes_per_iteration("rto", "gae", 1, 64, 16, 48)
    p2 = passes_per_iteration("rto", "gae", 2, 64, 16, 48)
    assert p2["train_forwards"] == 2 * p1["train_forwards"] == 4
    assert p2["forward_equivalents"] - p1["forward_equivalents"] == 2 + 2 * 2


def test_time_per_iteration_skips_warmup(tmp_path):
    rows = [
        {"iteration": 1, "time_generate_s": 9.0, "time_score_s": 9.0, "time_train_s": 9.0},
        {"iteration": 2, "time_generate_s": 1.0, "time_score_s": 0.5, "time_train_s": 2.0},
        {"iteration": 3, "time_generate_s": 3.0, "time_score_s": 1.5, "time_train_s": 4.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = time_per_iteration(path)
    assert t == pytest.approx({"generate": 2.0, "score": 1.0, "train": 3.0, "total": 6.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # two rows: both kept
    assert time_per_iteration(path)["generate"] == pytest.approx(5.0)


def test_demo_settings_added_later_keep_cached_cells_valid():
    """Settings the demo gained after cells were cached (sampling engine, temperature, top-p, samples per
    prompt) stay out of a cell's spec at their old behaviour, so cached cells keep their hashes; any other
    value changes the hash."""
    import dataclasses

    from rto.demo import DemoConfig, resolve
    from rto.experiments.core import demo_spec

    d = resolve(DemoConfig(preset="test", out="x"))
    spec = demo_spec(d)
    assert not {"engine", "temperature", "top_p", "num_samples_per_prompt", "model", "lora"} & set(spec)
    hot = demo_spec(dataclasses.replace(d, temperature=0.7))
    assert hot["temperature"] == 0.7 and cell_hash({"demo": hot}) != cell_hash({"demo": spec})
