"""Dropout is off wherever rto says so, including the dropout that Llama-, Qwen2- and similar models take
from float fields of their config (``attention_dropout``) rather than from ``nn.Dropout`` modules."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    Qwen2Config,
)

from rto import models
from rto.config import DPOConfig, PPOConfig, RewardConfig
from rto.trainers.dpo import train_dpo
from rto.trainers.ppo import train_ppo
from rto.trainers.reward import train_reward
from tests.trainers.helpers import preference_rows, prompt_rows, read_metrics, write_jsonl

ARCHS = ["llama", "qwen2"]


def _config(arch: str, tokenizer, **kw):
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, attention_dropout=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **kw,
    )  # fmt: skip
    return LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def worlds(tmp_path_factory, tiny_tokenizer):
    """Per architecture: a causal LM and a one-label score model (mean 0, std 1) with dropout in the config."""
    out = {}
    for arch in ARCHS:
        root = tmp_path_factory.mktemp(f"dropout_{arch}")
        torch.manual_seed(0)
        _save(AutoModelForCausalLM.from_config(_config(arch, tiny_tokenizer)), tiny_tokenizer, root / "lm")
        torch.manual_seed(1)
        rm = AutoModelForSequenceClassification.from_config(_config(arch, tiny_tokenizer, num_labels=1))
        rm.config.rto_score_mean, rm.config.rto_score_std = 0.0, 1.0
        _save(rm, tiny_tokenizer, root / "rm")
        write_jsonl(root / "prefs.jsonl", preference_rows(16))
        write_jsonl(root / "prompts.jsonl", prompt_rows(8))
        out[arch] = root
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_makes_train_mode_deterministic(worlds, arch):
    ids = torch.randint(3, 200, (2, 12))
    for load in (models.load_causal_lm, models.load_score_model):
        model = load(str(worlds[arch] / ("lm" if load is models.load_causal_lm else "rm")))
        assert model.config.attention_dropout == pytest.approx(0.3)
        model.train()
        torch.manual_seed(0)
        noisy = [model(ids).logits for _ in range(2)]
        assert not torch.equal(*noisy)  # the config-level dropout is really there
        models.disable_dropout(model)
        model.train()
        a, b = model(ids).logits, model(ids).logits
        model.eval()
        assert torch.equal(a, b) and torch.equal(a, model(ids).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_first_ppo_ratio_is_exactly_one(tmp_path, worlds, arch):
    w = worlds[arch]
    cfg = PPOConfig(
        policy=str(w / "lm"), reward_model=str(w / "rm"), prompts=str(w / "prompts.jsonl"), reward_mode="ppo",
        output_dir=str(tmp_path / "ppo"), num_iterations=1, rollout_batch_size=8, mini_batch_size=8,
        max_new_tokens=8, actor_lr=1e-3, critic_lr=1e-3, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    first = read_metrics(train_ppo(cfg))[0]
    assert first["ratio_mean"] == 1.0
    assert first["approx_kl"] == 0.0 and first["clipfrac"] == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_first_dpo_loss_is_exactly_log2(tmp_path, worlds, arch):
    w = worlds[arch]
    cfg = DPOConfig(
        model=str(w / "lm"), data=str(w / "prefs.jsonl"), output_dir=str(tmp_path / "dpo"), beta=0.1,
        learning_rate=1e-3, max_steps=1, per_device_batch_size=8, logging_steps=1, progress=False,
        warmup_ratio=0.0,
    )  # fmt: skip
    first = read_metrics(train_dpo(cfg))[0]
    # policy == reference up to float rounding (one ulp of a summed log-prob, ~2e-7 here); the config's
    # attention dropout left on moves the implicit rewards by ~2e-3
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_reward_model_trains_on_its_eval_mode_scores(tmp_path, worlds, arch):
    """The first step's loss (train mode) is the loss of the saved model's scores (eval mode): a learning
    rate of 1e-30 leaves the float32 weights as they were."""
    w = worlds[arch]
    cfg = RewardConfig(
        model=str(w / "lm"), data=str(w / "prefs.jsonl"), output_dir=str(tmp_path / "rm"), learning_rate=1e-30,
        max_steps=1, per_device_batch_size=16, logging_steps=1, progress=False, warmup_ratio=0.0, seed=0,
    )  # fmt: skip
    out = train_reward(cfg)
    first = read_metrics(out)[0]
    from rto.data.formats import to_preference_examples
    from rto.data.loading import load_rows
    from rto.data.tokenize import tokenize_all, tokenize_preference
    from rto.trainers.reward import preference_scores

    tok = models.load_tokenizer(str(out))
    examples = to_preference_examples(load_rows(str(w / "prefs.jsonl"), "train", None), source="prefs")
    items, _ = tokenize_all(tokenize_preference, tok, examples, source="prefs", max_length=512)
    model = models.load_score_model(str(out), tok).eval()
    with torch.no_grad():
        c, r = preference_scores(model, items, tok.pad_token_id, "cpu")
    assert first["loss"] == pytest.approx(float(-F.logsigmoid(c - r).mean()), rel=1e-6)
