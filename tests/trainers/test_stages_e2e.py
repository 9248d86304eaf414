"""SFT, reward model and DPO end to end on a tiny GPT-2: the loss goes down and the output folder
loads with plain transformers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rto.config import DPOConfig, RewardConfig, SFTConfig
from rto.trainers.dpo import train_dpo
from rto.trainers.reward import train_reward
from rto.trainers.sft import train_sft
from tests.trainers.helpers import preference_rows, read_metrics, sft_rows, write_jsonl

COMMON = dict(
    per_device_batch_size=8, logging_steps=1, progress=False, warmup_ratio=0.0, lr_scheduler="constant"
)


def _first_last(history, key):
    values = [r[key] for r in history]
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def test_sft_learns_and_saves_a_plain_hf_folder(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    cfg = SFTConfig(
        model=str(tiny_model_dir),
        data=str(data),
        output_dir=str(tmp_path / "sft"),
        learning_rate=3e-3,
        max_steps=24,
        **COMMON,
    )
    out = train_sft(cfg)
    history = read_metrics(out)
    assert len(history) == 24 and [r["step"] for r in history] == list(range(1, 25))
    first, last = _first_last(history, "loss")
    assert last < 0.7 * first, (first, last)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert (out / "model.safetensors").is_file() and (out / "rto_config.yaml").is_file()
    ids = tok("The movie ", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_reward_model_learns_preferences_and_stores_stats(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows())
    cfg = RewardConfig(
        model=str(tiny_model_dir),
        data=str(data),
        output_dir=str(tmp_path / "rm"),
        learning_rate=3e-3,
        max_steps=24,
        **COMMON,
    )
    out = train_reward(cfg)
    history = read_metrics(out)
    first, last = _first_last(history, "loss")
    assert last < first
    assert _first_last(history, "accuracy")[1] > 0.8
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    cfgjson = json.loads((out / "config.json").read_text())
    assert "rto_score_mean" in cfgjson and cfgjson["rto_score_std"] > 0


def test_dpo_learns_preferences(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows())
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        data=str(data),
        output_dir=str(tmp_path / "dpo"),
        learning_rate=3e-3,
        beta=0.1,
        max_steps=16,
        **COMMON,
    )
    out = train_dpo(cfg)
    history = read_metrics(out)
    # first step: policy == reference, so the loss is exactly log 2 and rewards are 0
    assert history[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    first, last = _first_last(history, "loss")
    assert last < first
    assert history[-1]["rewards/margins"] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in history[0]
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("loss_type", ["ipo", "simpo", "rdpo", "tdpo"])
def test_dpo_family_losses_run(tmp_path, tiny_model_dir, loss_type):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows(16))
    beta = 2.0 if loss_type == "simpo" else 0.1
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        data=str(data),
        output_dir=str(tmp_path / loss_type),
        learning_rate=1e-3,
        beta=beta,
        loss_type=loss_type,
        max_steps=3,
        **COMMON,
    )
    history = read_metrics(train_dpo(cfg))
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_models_load_in_the_configured_dtype(tmp_path, tiny_model_dir):
    """--dtype: float32 by default, bfloat16 on request (the run trains and saves in it), auto = the
    precision stored with the model; anything else is refused by name."""
    from rto import models
    from rto.errors import RtoError

    tok = models.load_tokenizer(str(tiny_model_dir))
    assert next(models.load_causal_lm(str(tiny_model_dir), tok).parameters()).dtype == torch.float32
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = train_sft(
        SFTConfig(
            model=str(tiny_model_dir),
            data=str(data),
            output_dir=str(tmp_path / "sft"),
            max_steps=1,
            dtype="bfloat16",
            **COMMON,
        )  # fmt: skip
    )
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    assert next(models.load_causal_lm(str(out), tok, dtype="auto").parameters()).dtype == torch.bfloat16
    assert next(models.load_score_model(str(out), tok, fresh_head=True).parameters()).dtype == torch.float32
    with pytest.raises(RtoError, match="dtype"):
        models.load_causal_lm(str(tiny_model_dir), tok, dtype="fp8")
