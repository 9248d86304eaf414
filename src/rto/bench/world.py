"""The bench's world, built offline: a BPE tokenizer trained on generated reviews, SFT, DPO and
reward-model folders of a GPT-2 preset with random weights (the DPO model is the SFT model moved a
little), and prompts of exactly ``prompt_length`` tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rto.errors import ConfigError


def build_world(cfg, root: Path) -> dict[str, Any]:
    """Tokenizer, SFT / DPO / RM folders and a prompt file under ``root`` (``cfg``: a BenchConfig);
    returns paths and sizes."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from rto.models import SCORE_MEAN_KEY, SCORE_STD_KEY
    from rto.tasks.sentiment import generate_reviews, tiny_gpt2_config
    from rto.tasks.tokenizer import train_bpe_tokenizer

    texts = generate_reviews(2000, seed=cfg.seed)
    tok = train_bpe_tokenizer(texts, vocab_size=cfg.vocab_size)
    n_positions = max(128, cfg.prompt_length + cfg.max_new_tokens)
    gcfg = tiny_gpt2_config(tok, cfg.model_size, n_positions=n_positions)
    torch.manual_seed(cfg.seed)
    sft = GPT2LMHeadModel(gcfg)
    dpo = GPT2LMHeadModel(gcfg)
    dpo.load_state_dict(sft.state_dict())
    with torch.no_grad():  # a DPO model is the SFT model moved a little
        for p in dpo.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gcfg.num_labels = 1
    rm = GPT2ForSequenceClassification(gcfg)
    setattr(rm.config, SCORE_MEAN_KEY, 0.0)
    setattr(rm.config, SCORE_STD_KEY, 1.0)
    for name, model in (("sft", sft), ("dpo", dpo), ("rm", rm)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    # Prompts: the first prompt_length tokens of held-out reviews, so every prompt has the same length.
    prompts = []
    for text in generate_reviews(4 * cfg.rollout_batch_size, seed=cfg.seed + 1):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= cfg.prompt_length:
            prompts.append(tok.decode(ids[: cfg.prompt_length]))
    if len(prompts) < cfg.rollout_batch_size:
        raise ConfigError(
            f"field 'prompt_length' ({cfg.prompt_length}) is longer than most generated reviews; use fewer tokens"
        )
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {
        "root": root,
        "vocab": len(tok),
        "params": sum(p.numel() for p in sft.parameters()),
        "n_prompts": len(prompts),
    }
