"""Numerical faults: a NaN injected at step k is caught at step k, names the quantity and the step, and
either stops the run before any update with it (on_nonfinite="stop") or skips that update and goes on
("skip"). The last good checkpoint is never overwritten by a bad state."""

import math

import pytest
import torch
from safetensors.torch import load_file

import rto.trainers.ppo as ppo_mod
from rto import models
from rto.algorithms.losses import LossSum
from rto.config import PPOConfig, SFTConfig
from rto.errors import NonFiniteError
from rto.trainers import checkpoints, guards
from rto.trainers.ppo import train_ppo
from rto.trainers.sft import train_sft
from tests.reliability.reliability_helpers import (
    assert_same_run,
    build_world,
    read_metrics,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    return build_world(tmp_path_factory.mktemp("world"), tiny_tokenizer)


def _nan_on_call(fn, bad_calls, poison=lambda out: out * float("nan")):
    """Wrap fn so that its n-th calls (1-based, in bad_calls) return a poisoned result."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        out = fn(*args, **kwargs)
        return poison(out) if calls["n"] in bad_calls else out

    return wrapper


def _sft_cfg(world, out, **kw):
    base = dict(model=str(world / "sft"), data=str(world / "sft.jsonl"), output_dir=str(out), max_steps=4,
                per_device_batch_size=4, learning_rate=1e-3, save_steps=2, save_total_limit=5, progress=False,
                max_length=48, seed=1)  # fmt: skip
    return SFTConfig(**{**base, **kw})


def _ckpts(out):
    return [p.name for p in checkpoints.list_checkpoints(out)]


# ----------------------------------------------------------------------------- supervised loop


def test_sft_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    # one forward per step (batch 4, no accumulation): the 3rd call is step 3
    monkeypatch.setattr(models, "response_token_logps", _nan_on_call(models.response_token_logps, {3}))
    out = tmp_path / "stop"
    with pytest.raises(NonFiniteError) as e:
        train_sft(_sft_cfg(world, out))
    msg = str(e.value)
    assert msg.startswith("non-finite sft loss at step 3; stopped before updating the weights")
    assert "the last good checkpoint is" in msg and msg.count("step-00000002") == 1
    assert "--on-nonfinite skip" in msg
    assert _ckpts(out) == ["step-00000002"] and not list((out / "checkpoints").glob(".tmp-*"))
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    # the checkpoint is good: resuming without the fault gives exactly the uninterrupted run
    monkeypatch.undo()
    train_sft(_sft_cfg(world, out, resume=True))
    reference = train_sft(_sft_cfg(world, tmp_path / "reference"))
    assert_same_run(reference, out)


def test_sft_nan_loss_with_skip_drops_only_that_update(world, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(models, "response_token_logps", _nan_on_call(models.response_token_logps, {3}))
    out = tmp_path / "skip"
    with caplog.at_level("WARNING"):
        train_sft(_sft_cfg(world, out, on_nonfinite="skip"))
    assert "non-finite sft loss at step 3: skipping this update (on_nonfinite=skip)" in caplog.text
    history = read_metrics(out)
    assert [r["step"] for r in history] == [1, 2, 4]
    assert [r["skipped_updates"] for r in history] == [0, 0, 1]
    assert all(math.isfinite(r["loss"]) for r in history)
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_stops_after_max_consecutive_skips(world, tmp_path, monkeypatch):
    """Skipping is not forever: steps 2 and 3 bad in a row with a limit of 2 stop the run at step 3,
    naming the limit; a good step in between resets the count (steps 1 and 3 bad: the run finishes)."""
    monkeypatch.setattr(models, "response_token_logps", _nan_on_call(models.response_token_logps, {2, 3}))
    with pytest.raises(
        NonFiniteError, match=r"step 3: 2 updates in a row were non-finite \(max_consecutive_skips=2\)"
    ):
        train_sft(_sft_cfg(world, tmp_path / "limit", on_nonfinite="skip", max_consecutive_skips=2))
    monkeypatch.undo()
    monkeypatch.setattr(models, "response_token_logps", _nan_on_call(models.response_token_logps, {1, 3}))
    train_sft(_sft_cfg(world, tmp_path / "reset", on_nonfinite="skip", max_consecutive_skips=2))
    assert [r["step"] for r in read_metrics(tmp_path / "reset")] == [2, 4]


def test_nonfinite_gradient_is_named(world, tmp_path, monkeypatch):
    """A finite loss whose gradient is not (e.g. an overflow in backward) is caught before the step."""
    original = guards.clip_and_check_grads

    def inf_grad(acc, model, max_norm, step, name):
        if step == 2:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        return original(acc, model, max_norm, step, name)

    monkeypatch.setattr(guards, "clip_and_check_grads", inf_grad)
    with pytest.raises(
        NonFiniteError, match=r"^non-finite gradient norm of the model at step 2; .*no checkpoint"
    ):
        train_sft(_sft_cfg(world, tmp_path / "grad", save_steps=0))


def test_nonfinite_weights_are_never_written_over_a_good_checkpoint(world, tmp_path, monkeypatch):
    """Weights that became inf (an update overflowed) are refused at the next checkpoint."""
    original = guards.clip_and_check_grads

    def corrupt_weights(acc, model, max_norm, step, name):
        norm = original(acc, model, max_norm, step, name)
        if step == 4:  # after this step's gradient check, before its checkpoint
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return norm

    monkeypatch.setattr(guards, "clip_and_check_grads", corrupt_weights)
    out = tmp_path / "weights"
    with pytest.raises(NonFiniteError) as e:
        train_sft(_sft_cfg(world, out, max_steps=6))
    msg = str(e.value)
    assert (
        msg.startswith("non-finite weights (GPT2LMHeadModel.") and " at step 4: not writing checkpoint" in msg
    )
    assert "the last complete checkpoint" in msg and "step-00000002, is intact" in msg
    assert _ckpts(out) == ["step-00000002"]
    saved = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


# ----------------------------------------------------------------------------- PPO


def _ppo_cfg(world, out, **kw):
    base = dict(policy=str(world / "sft"), reward_model=str(world / "rm"), dpo_model=str(world / "dpo"),
                prompts=str(world / "prompts.jsonl"), output_dir=str(out), num_iterations=3,
                rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4, actor_lr=1e-3, critic_lr=1e-3,
                save_steps=1, save_total_limit=5, progress=False)  # fmt: skip
    return PPOConfig(**{**base, **kw})


def _poison_loss(loss):
    return LossSum(loss.total * float("nan"), loss.count)


def _poison_rewards(r):
    r.total = r.total * float("nan")
    return r


def _poisoned_run(cfg, role: str, method: str, calls, **kw):
    """A PPO run whose scoring role returns a poisoned result at the given calls (one call per iteration)."""
    run = ppo_mod.setup_ppo(cfg)
    scorer = getattr(run.scorers, role)
    setattr(scorer, method, _nan_on_call(getattr(scorer, method), calls, **kw))
    return run


# where to inject (a scoring role of the run, or a function the trainer calls), calls that are poisoned
# (iteration 2), how, the name in the message
INJECTIONS = {
    "logits": ("role", "policy.logps", {2}, None, "policy log-probs"),
    "rm score": ("role", "reward.scores", {2}, None, "reward-model scores"),
    "token rewards": ("function", "compose_token_rewards", {2}, _poison_rewards, "token rewards"),
    "advantages": (
        "function",
        "estimate_advantages",
        {2},
        lambda out: (out[0] * float("nan"), out[1]),
        "advantages",
    ),
    # two mini-batches per iteration: call 3 is iteration 2's first
    "policy loss": (
        "function",
        "policy_loss_sum",
        {3},
        lambda out: (_poison_loss(out[0]), out[1]),
        "policy loss",
    ),
}


@pytest.mark.parametrize("fault", list(INJECTIONS))
def test_ppo_nonfinite_is_caught_at_its_iteration(fault, world, tmp_path, monkeypatch):
    kind, target, calls, poison, name = INJECTIONS[fault]
    kw = {} if poison is None else {"poison": poison}
    out = tmp_path / "ppo"
    if kind == "role":
        run = _poisoned_run(_ppo_cfg(world, out), *target.split("."), calls, **kw)
    else:
        monkeypatch.setattr(ppo_mod, target, _nan_on_call(getattr(ppo_mod, target), calls, **kw))
        run = _ppo_cfg(world, out)
    with pytest.raises(NonFiniteError, match=rf"^non-finite {name} at iteration 2; stopped before updating"):
        train_ppo(run)
    assert _ckpts(out) == ["step-00000001"]  # the good state before the fault
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_ppo_nan_reward_with_skip_skips_that_iteration(world, tmp_path, caplog):
    out = tmp_path / "ppo"
    run = _poisoned_run(_ppo_cfg(world, out, on_nonfinite="skip"), "reward", "scores", {2})
    with caplog.at_level("WARNING"):
        train_ppo(run)
    assert "non-finite reward-model scores at iteration 2: skipping this update" in caplog.text
    history = read_metrics(out)
    assert [r["step"] for r in history] == [1, 3]
    assert all(math.isfinite(r["score"]) and math.isfinite(r["policy_loss"]) for r in history)
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
