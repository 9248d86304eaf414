"""PPO/RTO end to end on tiny models built from config."""

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from rto.algorithms.group_advantages import GROUP_ESTIMATORS, group_advantages
from rto.config import PPOConfig
from rto.errors import RtoError
from rto.tasks.tokenizer import train_bpe_tokenizer
from rto.trainers.ppo import train_ppo
from tests.conftest import SAMPLE_TEXTS, make_tiny_gpt2
from tests.trainers.helpers import prompt_rows, read_metrics, write_jsonl


def _score_model(tokenizer, seed, mean=0.0, std=1.0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(cfg)
    model.config.rto_score_mean = mean
    model.config.rto_score_std = std
    return model


@pytest.fixture(scope="module")
def ppo_world(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("ppo_world")
    sft = make_tiny_gpt2(tiny_tokenizer, seed=0)
    sft.save_pretrained(root / "sft")
    tiny_tokenizer.save_pretrained(root / "sft")
    dpo = make_tiny_gpt2(tiny_tokenizer, seed=0)
    with torch.no_grad():  # a DPO model = the SFT model moved a little
        for p in dpo.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dpo.save_pretrained(root / "dpo")
    tiny_tokenizer.save_pretrained(root / "dpo")
    rm = _score_model(tiny_tokenizer, seed=1, mean=0.1, std=2.0)
    rm.save_pretrained(root / "rm")
    tiny_tokenizer.save_pretrained(root / "rm")
    # a reward model with its own (different) tokenizer
    other_tok = train_bpe_tokenizer([t.upper() for t in SAMPLE_TEXTS] + SAMPLE_TEXTS, vocab_size=400)
    rm2 = _score_model(other_tok, seed=2)
    rm2.save_pretrained(root / "rm_other")
    other_tok.save_pretrained(root / "rm_other")
    write_jsonl(root / "prompts.jsonl", prompt_rows(32))
    return root


def _cfg(world, out, **kw):
    base = dict(
        policy=str(world / "sft"), reward_model=str(world / "rm"), dpo_model=str(world / "dpo"),
        prompts=str(world / "prompts.jsonl"), output_dir=str(out), num_iterations=2, rollout_batch_size=8,
        mini_batch_size=4, max_new_tokens=8, actor_lr=1e-3, critic_lr=1e-3, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    base.update(kw)
    return PPOConfig(**base)


@pytest.mark.parametrize("mode", ["rto", "ppo"])
def test_ppo_modes_run_and_save(tmp_path, ppo_world, mode):
    out = train_ppo(_cfg(ppo_world, tmp_path / mode, reward_mode=mode, dump_rollouts=1))
    history = read_metrics(out)
    assert [r["step"] for r in history] == [1, 2]
    for key in ("score", "kl", "kl_k3", "entropy", "response_length", "eos_rate", "policy_loss", "value_loss",
                "clipfrac", "approx_kl", "explained_variance", "time_generate_s", "dpo_reward"):  # fmt: skip
        assert key in history[0], key
        assert history[0][key] == history[0][key]  # not NaN
    # first iteration: policy == reference, so the sampled KL is exactly 0
    assert history[0]["kl"] == 0.0
    if mode == "ppo":
        assert history[0]["dpo_reward"] == 0.0
    AutoModelForCausalLM.from_pretrained(out)
    AutoModelForSequenceClassification.from_pretrained(out / "critic")
    records = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 16 and {r["iteration"] for r in records} == {1, 2}
    r0 = records[0]
    n = len(r0["response_ids"])
    assert all(len(r0[k]) == n for k in ("logps", "ref_logps", "rewards", "advantages", "returns", "values"))


def test_first_update_has_ratio_one_and_zero_kl(tmp_path, ppo_world):
    """One mini-batch per rollout: the update's new log-probs are the rollout's old ones."""
    out = train_ppo(_cfg(ppo_world, tmp_path / "ratio", num_iterations=1, mini_batch_size=8))
    first = read_metrics(out)[0]
    assert first["kl"] == 0.0 and first["kl_k3"] == 0.0
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["clipfrac"] == 0.0
    assert first["approx_kl"] == pytest.approx(0.0, abs=1e-9)


def test_rollout_dump_makes_the_reward_math_checkable(tmp_path, ppo_world):
    cfg = _cfg(
        ppo_world,
        tmp_path / "dump",
        reward_mode="rto",
        num_iterations=1,
        dump_rollouts=1,
        beta1=0.5,
        beta2=0.3,
    )
    out = train_ppo(cfg)
    for line in (out / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        norm = max(min((r["rm_score"] - 0.1) / 2.0, 10), -10)
        assert r["rm_score_normalized"] == pytest.approx(norm, abs=1e-5)
        for h, total in enumerate(r["rewards"]):
            expected = 0.5 * (r["dpo_logps"][h] - r["ref_logps"][h]) - 0.3 * (
                r["logps"][h] - r["ref_logps"][h]
            )
            if h == len(r["rewards"]) - 1:
                expected += norm
            assert total == pytest.approx(expected, abs=1e-4)


def test_reinforce_pp_has_no_critic(tmp_path, ppo_world):
    out = train_ppo(_cfg(ppo_world, tmp_path / "rpp", reward_mode="rto", advantage="reinforce++"))
    assert not (out / "critic").exists()
    assert "value_loss" not in read_metrics(out)[0]


def test_reward_model_with_its_own_tokenizer(tmp_path, ppo_world, caplog):
    cfg = _cfg(
        ppo_world,
        tmp_path / "other",
        reward_mode="rto",
        reward_model=str(ppo_world / "rm_other"),
        dump_rollouts=1,
    )
    with caplog.at_level("INFO"):
        out = train_ppo(cfg)
    assert "fresh value head" in caplog.text
    records = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    # the score really comes from the other reward model, on re-tokenized text
    from transformers import AutoTokenizer

    from rto.data.tokenize import encode_completion, encode_prompt

    rtok = AutoTokenizer.from_pretrained(ppo_world / "rm_other")
    rm = AutoModelForSequenceClassification.from_pretrained(ppo_world / "rm_other").eval()
    r = records[0]
    ids = encode_prompt(rtok, r["prompt"]) + encode_completion(rtok, r["response"])
    if not r["ended"]:
        ids = ids[:-1]
    with torch.no_grad():
        expected = rm(torch.tensor([ids])).logits[0, 0].item()
    assert r["rm_score"] == pytest.approx(expected, abs=1e-4)


def test_dpo_model_with_another_tokenizer_is_refused(tmp_path, ppo_world):
    with pytest.raises(RtoError, match="different tokenizer"):
        train_ppo(_cfg(ppo_world, tmp_path / "bad", reward_mode="rto", dpo_model=str(ppo_world / "rm_other")))


@pytest.mark.parametrize("mode", ["semi-rto", "ddpo", "rs-ppo", "dpo-only"])
def test_other_modes_run(tmp_path, ppo_world, mode):
    kw = {"reward_model": None, "advantage": "reinforce++"} if mode == "dpo-only" else {}
    out = train_ppo(_cfg(ppo_world, tmp_path / mode, reward_mode=mode, num_iterations=1, **kw))
    assert len(read_metrics(out)) == 1


# --------------------------------------------------------------------------- group estimators

K = 2  # responses per prompt


def _groups_of(out):
    """iteration -> rows of rollouts.jsonl ordered by sample index."""
    by_it = {}
    for line in (out / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_it.setdefault(r["iteration"], []).append(r)
    return {it: sorted(rows, key=lambda r: r["sample"]) for it, rows in by_it.items()}


@pytest.mark.parametrize("mode, level", [("rto", "token"), ("ppo", "sequence")])
@pytest.mark.parametrize("advantage", GROUP_ESTIMATORS)
def test_group_estimators_run_and_use_their_groups(tmp_path, ppo_world, mode, level, advantage):
    cfg = _cfg(ppo_world, tmp_path / advantage, reward_mode=mode, advantage=advantage, baseline_level=level,
               num_samples_per_prompt=K, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=6,
               dump_rollouts=1)  # fmt: skip
    out = train_ppo(cfg)
    history = read_metrics(out)
    assert [r["step"] for r in history] == [1, 2]
    assert not (out / "critic").exists() and "value_loss" not in history[0]
    for key in ("policy_loss", "advantages_mean", "kl", "score", "clipfrac"):
        assert history[0][key] == history[0][key]  # not NaN
    differing = 0
    for rows in _groups_of(out).values():
        # rollout_batch_size counts prompts: K responses for each, consecutive sample indices per prompt
        assert [r["sample"] for r in rows] == list(range(4 * K))
        for g in range(4):
            members = rows[g * K : (g + 1) * K]
            assert len({tuple(m["prompt_ids"]) for m in members}) == 1
            differing += len({tuple(m["response_ids"]) for m in members}) > 1
        # the dumped advantages are the estimator's, applied to the dumped rewards with these groups
        T = max(len(r["rewards"]) for r in rows)
        rewards = torch.zeros(len(rows), T, dtype=torch.float64)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, r in enumerate(rows):
            rewards[b, : len(r["rewards"])] = torch.tensor(r["rewards"], dtype=torch.float64)
            mask[b, : len(r["rewards"])] = True
        groups = torch.tensor([r["sample"] // K for r in rows])
        expected = group_advantages(advantage, rewards, mask, groups, level=level)
        for b, r in enumerate(rows):
            got = torch.tensor(r["advantages"], dtype=torch.float64)
            torch.testing.assert_close(got, expected[b, : len(got)], atol=2e-4, rtol=1e-3)
    assert differing > 0  # the K samples of a prompt have their own seeds


def test_kl_as_a_loss_term(tmp_path, ppo_world):
    cfg = _cfg(ppo_world, tmp_path / "klloss", reward_mode="rto", advantage="grpo", num_samples_per_prompt=K,
               rollout_batch_size=4, mini_batch_size=8, max_new_tokens=6, kl_placement="loss", beta2=0.1,
               dump_rollouts=1)  # fmt: skip
    out = train_ppo(cfg)
    history = read_metrics(out)
    # one optimizer step per iteration: the first update starts from the reference, so its KL term is 0
    assert history[0]["kl_loss"] == pytest.approx(0.0, abs=1e-6)
    assert history[1]["kl_loss"] > 0 and history[1]["kl"] > 0  # k3 of the moved policy
    for rows in _groups_of(out).values():
        assert all(x == 0 for r in rows for x in r["reward_kl"])  # not in the reward
