"""PPO/RTO on 2 processes (torchrun, gloo) against 1 process: same rollouts, token rewards, advantages,
metrics and updated weights; only the main process writes; a 2-process resume finishes like an
uninterrupted 2-process run.

One torchrun launch runs every 2-process job (imports cost seconds per process); the 1-process
references run in this pytest process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_launch import (
    NEEDS_GLOO,
    assert_same_metrics,
    assert_same_rollouts,
    eos_prone_gpt2,
    launch,
    max_weight_diff,
    one_thread,
    read_rollouts,
    save,
    score_gpt2,
    weights,
)  # isort: skip

from rto.config import PPOConfig
from rto.trainers.ppo import train_ppo
from tests.trainers.helpers import prompt_rows, read_metrics, write_jsonl

pytestmark = NEEDS_GLOO

ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("dist_ppo")
    tok = tiny_tokenizer
    save(eos_prone_gpt2(tok, seed=0), tok, root / "sft")
    dpo = eos_prone_gpt2(tok, seed=0)
    with torch.no_grad():  # a DPO model: the SFT model moved a little
        for p in dpo.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save(dpo, tok, root / "dpo")
    save(score_gpt2(tok, seed=1, mean=0.1, std=2.0), tok, root / "rm")
    write_jsonl(root / "prompts.jsonl", prompt_rows(32))

    base = dict(
        policy=str(root / "sft"), reward_model=str(root / "rm"), dpo_model=str(root / "dpo"),
        prompts=str(root / "prompts.jsonl"), rollout_batch_size=8, mini_batch_size=4, max_new_tokens=8,
        actor_lr=1e-3, critic_lr=1e-3, warmup_ratio=0.0, progress=False, dump_rollouts=1, seed=3,
    )  # fmt: skip
    # GAE with a critic, 2 PPO epochs (shuffled second pass), adaptive KL, gradient accumulation on 2 procs
    rto = dict(base, reward_mode="rto", advantage="gae", num_iterations=3, ppo_epochs=2, adaptive_kl=True,
               kl_target=0.01, kl_horizon=16, save_steps=2, per_device_micro_batch_size=1)  # fmt: skip
    rpp = dict(
        base, reward_mode="rto", advantage="reinforce++", num_iterations=2, per_device_micro_batch_size=1
    )
    # a group estimator: 4 prompts x 2 samples, KL as a loss term, token-mean loss over micro-batches of 1
    grp = dict(base, reward_mode="rto", advantage="grpo", num_samples_per_prompt=2, rollout_batch_size=4,
               num_iterations=2, per_device_micro_batch_size=1, loss_aggregation="token-mean",
               kl_placement="loss")  # fmt: skip
    # LoRA with a shared base: the reference is the policy with adapters off, the critic an adapter on the RM
    lora = dict(base, reward_mode="rto", advantage="gae", num_iterations=2, lora=True, lora_r=4, lora_alpha=8,
                per_device_micro_batch_size=1)  # fmt: skip
    two, one = root / "two", root / "one"
    reports = launch(
        [
            {"stage": "ppo", "config": dict(rto, output_dir=str(two / "rto"))},
            {
                "stage": "ppo",
                "config": dict(rto, output_dir=str(two / "rto_resumed")),
                "interrupt_after_checkpoint": 2,
            },
            {"stage": "ppo", "config": dict(rto, output_dir=str(two / "rto_resumed"), resume=True)},
            {"stage": "ppo", "config": dict(rpp, output_dir=str(two / "rpp"))},
            {"stage": "ppo", "config": dict(lora, output_dir=str(two / "lora"))},
            {"stage": "ppo", "config": dict(grp, output_dir=str(two / "grp"))},
        ],
        root / "launch",
        watch=[two],
    )
    # 1 process holds the whole batch; no accumulation (micro-batch = mini-batch)
    with one_thread():
        train_ppo(PPOConfig(**dict(rto, output_dir=str(one / "rto"), per_device_micro_batch_size=0)))
        train_ppo(PPOConfig(**dict(rpp, output_dir=str(one / "rpp"), per_device_micro_batch_size=0)))
        train_ppo(PPOConfig(**dict(lora, output_dir=str(one / "lora"), per_device_micro_batch_size=0)))
        train_ppo(PPOConfig(**dict(grp, output_dir=str(one / "grp"), per_device_micro_batch_size=0)))
    return {"one": one, "two": two, "reports": reports}


def test_two_processes_really_ran(runs):
    reports = runs["reports"]
    for rank, report in enumerate(reports):
        assert len(report["runs"]) == 6
        for seen in report["runs"]:
            assert seen["num_processes"] == 2
            assert seen["process_index"] == rank
            assert seen["is_main_process"] == (rank == 0)
            assert seen["distributed_type"] == "DistributedType.MULTI_CPU"
    assert reports[0]["runs"][1]["interrupted_at"] == 2


def test_the_world_exercises_uneven_shapes(runs):
    """Prompt widths and response lengths differ between the two processes' shares, so the gather
    must align left-padded prompts and right-padded responses."""
    rec = read_rollouts(runs["one"] / "rto")
    for it in (1, 2, 3):
        samples = [rec[(it, s)] for s in range(8)]
        lengths = [len(r["response_ids"]) for r in samples]
        assert len(set(lengths)) > 1 and any(r["ended"] for r in samples)
    first = [rec[(1, s)] for s in range(8)]
    widths = [max(len(r["prompt_ids"]) for r in half) for half in (first[:4], first[4:])]
    longest = [max(len(r["response_ids"]) for r in half) for half in (first[:4], first[4:])]
    assert widths[0] != widths[1] or longest[0] != longest[1]


@pytest.mark.parametrize("name", ["rto", "rpp", "lora", "grp"])
def test_rollouts_rewards_and_advantages_match_one_process(runs, name):
    one, two = read_rollouts(runs["one"] / name), read_rollouts(runs["two"] / name)
    assert len(one) == 8 * (3 if name == "rto" else 2)
    assert_same_rollouts(one, two, ATOL)
    if name == "grp":  # each process sampled both responses of its prompts: groups were split by prompt
        for it in (1, 2):
            for g in range(4):
                pair = [two[(it, 2 * g + j)] for j in range(2)]
                assert pair[0]["prompt_ids"] == pair[1]["prompt_ids"]
    if name not in ("rpp", "grp"):
        assert all(r["values"] is not None for r in two.values())
    else:
        assert all(r["values"] is None for r in two.values())


@pytest.mark.parametrize("name", ["rto", "rpp", "lora", "grp"])
def test_metrics_are_global_means(runs, name):
    """Token means (entropy, clipfrac, ...) over every process's tokens, not a mean of per-process
    means: with accumulation over micro-batches of 1 on 2 processes they equal 1 process's values."""
    assert_same_metrics(read_metrics(runs["one"] / name), read_metrics(runs["two"] / name), ATOL)


def test_adaptive_kl_controller_is_global(runs):
    coefs = [r["kl_coef"] for r in read_metrics(runs["two"] / "rto")]
    assert coefs[-1] != coefs[0]  # it did move (compared with 1 process in test_metrics_are_global_means)


@pytest.mark.parametrize("name", ["rto", "rpp", "lora", "grp"])
def test_updated_weights_match_one_process(runs, name):
    assert max_weight_diff(runs["one"] / name, runs["two"] / name) <= ATOL
    if name == "lora":  # the merged policy above; the critic adapter here
        a, b = (
            weights(runs[k] / name / "critic" / "adapter", "adapter_model.safetensors")
            for k in ("one", "two")
        )
        assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= ATOL
        assert max_weight_diff(Path(runs["one"]).parent / "sft", runs["two"] / name) > 1e-4  # trained
    elif name == "rto":
        assert max_weight_diff(runs["one"] / name / "critic", runs["two"] / name / "critic") <= ATOL
        start = Path(runs["one"]).parent / "sft"
        assert max_weight_diff(start, runs["two"] / name) > 1e-3  # the policy was really trained
    else:
        assert not (runs["two"] / name / "critic").exists()


def test_resume_on_two_processes_finishes_like_an_uninterrupted_run(runs):
    full, resumed = runs["two"] / "rto", runs["two"] / "rto_resumed"
    assert (resumed / "checkpoints" / "step-00000002" / "trainer_state.json").is_file()
    assert_same_rollouts(read_rollouts(full), read_rollouts(resumed), 1e-6)
    assert_same_metrics(read_metrics(full), read_metrics(resumed), 1e-6)
    assert max_weight_diff(full, resumed) <= 1e-6
    assert max_weight_diff(full / "critic", resumed / "critic") <= 1e-6


def test_only_the_main_process_writes(runs):
    """Process 1 changes nothing under the output folders except its own RNG state in a checkpoint
    (accelerate saves one random_states_<i>.pkl per process, which a resume needs)."""
    writes = runs["reports"][1]["writes"]
    allowed = [
        w
        for w in writes
        if Path(w[1]).parent.name == "checkpoints"
        and Path(w[1]).name.startswith(".tmp-step-")
        and w[0] == "os.mkdir"
        or Path(w[1]).parent.name.startswith(".tmp-step-")
        and Path(w[1]).name == "random_states_1.pkl"
    ]
    assert writes == allowed
    assert any(Path(w[1]).name == "random_states_1.pkl" for w in writes)  # the recording works
    assert runs["reports"][0]["writes"] == []  # the main process is not watched: the list is empty
    ckpt = runs["two"] / "rto" / "checkpoints" / "step-00000002"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
