"""PPO's actor learning-rate schedule runs over the actor's own updates (critic warm-up iterations neither
advance it nor count in its length), and PPO scores sampled tokens under the distribution they were
sampled from (without the pad token)."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from rto.config import PPOConfig
from rto.trainers.optim import make_scheduler
from rto.trainers.ppo import train_ppo
from tests.conftest import make_tiny_gpt2
from tests.engines.test_sampled_equals_scored import make_pad_likely
from tests.trainers.helpers import prompt_rows, read_metrics, write_jsonl

ACTOR_LR, CRITIC_LR = 1e-3, 3e-3


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("lr_world")
    make_tiny_gpt2(tiny_tokenizer).save_pretrained(root / "sft")
    tiny_tokenizer.save_pretrained(root / "sft")
    padded = make_tiny_gpt2(tiny_tokenizer)
    make_pad_likely(padded, tiny_tokenizer.pad_token_id)
    padded.save_pretrained(root / "sft_pad_likely")
    tiny_tokenizer.save_pretrained(root / "sft_pad_likely")
    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=1,
            pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        )
    )  # fmt: skip
    rm.config.rto_score_mean, rm.config.rto_score_std = 0.0, 1.0
    rm.save_pretrained(root / "rm")
    tiny_tokenizer.save_pretrained(root / "rm")
    write_jsonl(root / "prompts.jsonl", prompt_rows(16))
    return root


def _expected_lrs(peak: float, steps: int, scheduler: str, warmup_ratio: float) -> list[float]:
    """The learning rate of each of `steps` optimizer steps under rto's schedule of that length."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    cfg = PPOConfig(lr_scheduler=scheduler, warmup_ratio=warmup_ratio)
    sched = make_scheduler(opt, cfg, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("scheduler", "warmup_ratio"), [("linear", 0.0), ("cosine", 0.25)])
def test_actor_schedule_counts_only_actor_updates(tmp_path, world, monkeypatch, scheduler, warmup_ratio):
    used: dict[int, list[float]] = {}  # optimizer -> the learning rate of each of its steps
    adamw_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.setdefault(id(self), []).append(self.param_groups[0]["lr"])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    iterations, warmup, per_iteration = 4, 2, 2  # 2 mini-batches per rollout
    cfg = PPOConfig(
        policy=str(world / "sft"), reward_model=str(world / "rm"), prompts=str(world / "prompts.jsonl"),
        reward_mode="ppo", output_dir=str(tmp_path / "ppo"), num_iterations=iterations, rollout_batch_size=8,
        mini_batch_size=4, max_new_tokens=6, actor_lr=ACTOR_LR, critic_lr=CRITIC_LR, progress=False,
        lr_scheduler=scheduler, warmup_ratio=warmup_ratio, critic_warmup_iterations=warmup,
    )  # fmt: skip
    train_ppo(cfg)
    actor, critic = sorted(used.values(), key=len)
    assert len(actor) == (iterations - warmup) * per_iteration and len(critic) == iterations * per_iteration
    expected = _expected_lrs(ACTOR_LR, len(actor), scheduler, warmup_ratio)
    assert actor[0] == pytest.approx(expected[0]) and actor[-1] == pytest.approx(expected[-1])
    assert actor == pytest.approx(expected)
    assert critic == pytest.approx(_expected_lrs(CRITIC_LR, len(critic), scheduler, warmup_ratio))


def test_ppo_scores_without_the_pad_token(tmp_path, world, tiny_tokenizer):
    """The policy gives the pad token a third of its mass; the sampler never draws it, and the dumped
    policy and reference log-probs are those of the distribution renormalised without it."""
    T = 0.9
    cfg = PPOConfig(
        policy=str(world / "sft_pad_likely"), reward_model=str(world / "rm"), prompts=str(world / "prompts.jsonl"),
        reward_mode="ppo", output_dir=str(tmp_path / "ppo"), num_iterations=1, rollout_batch_size=8,
        mini_batch_size=8, max_new_tokens=6, progress=False, temperature=T, dump_rollouts=1,
    )  # fmt: skip
    out = train_ppo(cfg)
    # the update scores like the rollout: one mini-batch per rollout, so its first ratio is 1
    assert read_metrics(out)[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    from rto import models

    tok = models.load_tokenizer(str(world / "sft_pad_likely"))
    model = models.load_causal_lm(str(world / "sft_pad_likely"), tok).eval()
    pad = tok.pad_token_id
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8
    pad_mass = []
    for r in records:
        assert pad not in r["response_ids"]
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0].double() / T
        P = len(r["prompt_ids"])
        for h, token in enumerate(r["response_ids"]):
            z = logits[P - 1 + h]
            pad_mass.append(float(torch.softmax(z, -1)[pad]))
            kept = torch.cat([z[:pad], z[pad + 1 :]])
            expected = float(z[token] - torch.logsumexp(kept, -1))
            assert r["logps"][h] == pytest.approx(expected, abs=2e-5)
            assert r["ref_logps"][h] == pytest.approx(expected, abs=2e-5)
    assert sum(pad_mass) / len(pad_mass) > 0.2  # unrenormalised scores would be off by log(1 - that)
