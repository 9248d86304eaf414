"""SFT, reward model and DPO with gradient accumulation: per-device batch x accumulation x processes held
constant (1 x 4 x 2, 2 x 4 x 1, 2 x 2 x 2) gives the same loss trajectory and the same final weights;
a 2-process resume finishes like an uninterrupted 2-process run. The 2-process jobs are started with
`accelerate launch --config_file configs/accelerate/ddp_cpu.yaml`, the first one through the `rto` CLI.

Two settings make "the same" well defined rather than lucky:
- dropout off (SFT's default keeps it on): dropout masks are drawn per process and per micro-batch, so
  they cannot be the same for different splits of the batch;
- adam_eps=1e-4: some coordinates have an exactly-zero true gradient (attention key biases; the final
  LayerNorm bias of a reward model under a pairwise loss) and Adam divides their rounding noise by its
  own size, turning 1e-12 of noise into a step of learning-rate size. A larger eps leaves real
  gradients normalised and noise negligible.
"""

from __future__ import annotations

import json

import pytest

from tests.trainers.helpers import preference_rows, read_metrics, sft_rows, write_jsonl

from dist_launch import NEEDS_GLOO, cli_args, launch, max_weight_diff, one_thread, save  # isort: skip
from dist_worker import run_stage  # isort: skip

pytestmark = NEEDS_GLOO

STAGES = ("sft", "rm", "dpo")
# processes x per-device batch x accumulation -> (per-device batch, accumulation); reference: 1x4x2
SPLITS = {"2x4x1": (4, 1), "2x2x2": (2, 2)}
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import make_tiny_gpt2

    root = tmp_path_factory.mktemp("dist_supervised")
    save(make_tiny_gpt2(tiny_tokenizer, seed=0), tiny_tokenizer, root / "base")
    data = {
        "sft": str(write_jsonl(root / "sft.jsonl", sft_rows(48))),
        "rm": str(write_jsonl(root / "pref.jsonl", preference_rows(48))),
    }
    data["dpo"] = data["rm"]

    def cfg(stage, name, bs, accum, **kw):
        return dict(
            model=str(root / "base"), data=data[stage], output_dir=str(root / name), per_device_batch_size=bs,
            gradient_accumulation_steps=accum, max_steps=3, learning_rate=3e-3, lr_scheduler="constant",
            warmup_ratio=0.0, disable_dropout=True, adam_eps=1e-4, logging_steps=1, progress=False, **kw,
        )  # fmt: skip

    two = [
        {"stage": s, "config": cfg(s, f"{s}_{split}", *SPLITS[split], save_steps=2 if s == "sft" else 0)}
        for s in STAGES
        for split in SPLITS
    ]
    two += [
        {
            "stage": "sft",
            "config": cfg("sft", "sft_resumed", 4, 1, save_steps=2),
            "interrupt_after_checkpoint": 2,
        },
        {"stage": "sft", "config": cfg("sft", "sft_resumed", 4, 1, save_steps=2, resume=True)},
    ]
    two[0]["argv"] = cli_args("sft", two[0]["config"])  # the first run goes through `rto sft ...`
    assert two[0]["config"]["output_dir"].endswith("sft_2x4x1")
    # launched with `accelerate launch --config_file configs/accelerate/ddp_cpu.yaml` (PPO uses torchrun)
    reports = launch(
        two, root / "launch", watch=[root / n for n in ("sft_2x4x1", "sft_resumed")], launcher="accelerate"
    )
    with one_thread():
        for s in STAGES:  # the 1-process references, in this process
            run_stage(s, cfg(s, f"{s}_1x4x2", 4, 2))
    return {
        "root": root,
        "reports": reports,
        "configs": {r["config"]["output_dir"]: r["config"] for r in two},
    }


def _losses(folder) -> list[float]:
    return [r["loss"] for r in read_metrics(folder)]


def test_two_processes_really_ran(runs):
    for rank, report in enumerate(runs["reports"]):
        assert len(report["runs"]) == 8
        assert {(s["num_processes"], s["process_index"]) for s in report["runs"]} == {(2, rank)}


def test_the_splits_are_the_ones_intended(runs):
    for name, (bs, accum) in SPLITS.items():
        c = runs["configs"][str(runs["root"] / f"sft_{name}")]
        assert (c["per_device_batch_size"], c["gradient_accumulation_steps"]) == (bs, accum)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("split", SPLITS)
def test_same_loss_trajectory_and_weights(runs, stage, split):
    root = runs["root"]
    ref, other = root / f"{stage}_1x4x2", root / f"{stage}_{split}"
    a, b = _losses(ref), _losses(other)
    assert len(a) == len(b) == 3
    assert a[-1] < a[0]  # it trains
    assert max(abs(x - y) for x, y in zip(a, b)) <= ATOL, (a, b)
    # Every metric, grad_norm included: Adam hides a wrong gradient scale from the weights (it divides
    # the scale away), the norm of the synchronised gradient does not.
    for ra, rb in zip(read_metrics(ref), read_metrics(other)):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=ATOL, abs=ATOL), key
    assert max_weight_diff(ref, other) <= ATOL


def test_reward_model_score_stats_are_global(runs):
    root = runs["root"]
    ref = json.loads((root / "rm_1x4x2" / "config.json").read_text())
    for split in SPLITS:
        got = json.loads((root / f"rm_{split}" / "config.json").read_text())
        for key in ("rto_score_mean", "rto_score_std"):
            assert got[key] == pytest.approx(ref[key], abs=ATOL)


def test_resume_on_two_processes_finishes_like_an_uninterrupted_run(runs):
    root = runs["root"]
    full, resumed = root / "sft_2x4x1", root / "sft_resumed"
    assert runs["reports"][0]["runs"][6]["interrupted_at"] == 2
    assert (resumed / "checkpoints" / "step-00000002").is_dir()
    assert _losses(resumed) == pytest.approx(_losses(full), abs=1e-7)
    assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3]
    assert max_weight_diff(full, resumed) <= 1e-7


def test_only_the_main_process_writes(runs):
    writes = runs["reports"][1]["writes"]
    for event, path in writes:
        name, parent = path.rsplit("/", 2)[-1], path.rsplit("/", 2)[-2]
        ok_dir = event == "os.mkdir" and parent == "checkpoints" and name.startswith(".tmp-step-")
        ok_rng = parent.startswith(".tmp-step-") and name == "random_states_1.pkl"
        assert ok_dir or ok_rng, (event, path)
    assert any(p.endswith("random_states_1.pkl") for _, p in writes)
