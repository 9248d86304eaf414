"""LoRA: stages save a merged HF folder plus the adapter; PPO shares one base between the policy,
the reference (adapters off) and a DPO adapter, and the RM is the critic's base with adapters off."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rto.config import DPOConfig, PPOConfig
from rto.engines import never_sampled
from rto.models import response_token_logps
from rto.trainers.dpo import train_dpo
from rto.trainers.ppo import train_ppo
from tests.trainers.helpers import preference_rows, prompt_rows, read_metrics, write_jsonl
from tests.trainers.test_ppo_e2e import _score_model

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def lora_world(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("lora_world")
    data = write_jsonl(root / "pref.jsonl", preference_rows(16))
    cfg = DPOConfig(
        model=str(tiny_model_dir), data=str(data), output_dir=str(root / "dpo"), lora=True, lora_r=4,
        learning_rate=2e-2, max_steps=4, per_device_batch_size=4, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    train_dpo(cfg)
    rm = _score_model(tiny_tokenizer, seed=3, mean=0.0, std=1.0)
    rm.save_pretrained(root / "rm")
    tiny_tokenizer.save_pretrained(root / "rm")
    write_jsonl(root / "prompts.jsonl", prompt_rows(16))
    return root


def test_lora_dpo_saves_merged_model_and_adapter(lora_world, tiny_model_dir):
    out = lora_world / "dpo"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diff = max((a - b).abs().max().item() for a, b in zip(merged.parameters(), base.parameters()))
    assert diff > 0  # the adapter was trained and merged in


def test_shared_base_ppo_scores_match_separate_models(tmp_path, lora_world, tiny_model_dir, tiny_tokenizer):
    cfg = PPOConfig(
        policy=str(tiny_model_dir), reward_model=str(lora_world / "rm"), dpo_model=str(lora_world / "dpo"),
        prompts=str(lora_world / "prompts.jsonl"), output_dir=str(tmp_path / "ppo"), lora=True, lora_r=4,
        num_iterations=1, rollout_batch_size=8, mini_batch_size=8, max_new_tokens=6, dump_rollouts=1,
        actor_lr=1e-3, critic_lr=1e-3, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    out = train_ppo(cfg)
    assert read_metrics(out)[0]["kl"] == 0.0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    merged_dpo = AutoModelForCausalLM.from_pretrained(lora_world / "dpo").eval()
    rm = AutoModelForSequenceClassification.from_pretrained(lora_world / "rm").eval()
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8
    excluded = never_sampled(
        tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    )  # PPO scores as sampled
    for r in records:
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        attn = torch.ones_like(ids)
        P = len(r["prompt_ids"])
        with torch.no_grad():
            ref = response_token_logps(base, ids, attn, excluded_ids=excluded)[0, P - 1 :]
            dpo = response_token_logps(merged_dpo, ids, attn, excluded_ids=excluded)[0, P - 1 :]
            score = rm(ids).logits[0, 0].item()
        # the reference is exactly the base model; the DPO adapter's log-ratio is the merged DPO model's
        assert torch.allclose(torch.tensor(r["ref_logps"]), ref, atol=1e-5)
        ratio = torch.tensor(r["dpo_logps"]) - torch.tensor(r["ref_logps"])
        assert torch.allclose(ratio, dpo - ref, atol=1e-4)
        assert ratio.abs().max() > 1e-3  # the DPO adapter really differs from the base
        assert r["rm_score"] == pytest.approx(score, abs=1e-5)
    assert (out / "adapter" / "adapter_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(out)


def test_lora_without_peft_says_what_to_install(monkeypatch, tiny_tokenizer):
    import sys

    from rto.errors import RtoError
    from rto.models import lora_wrap
    from tests.conftest import make_tiny_gpt2

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft fails as if it were not installed
    with pytest.raises(RtoError, match=r"--lora needs the peft package: pip install peft \(in a clone"):
        lora_wrap(make_tiny_gpt2(tiny_tokenizer), PPOConfig())
