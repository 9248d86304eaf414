"""`rto sft`: next-token loss on completion tokens only (prompt tokens are context, not targets)."""

from __future__ import annotations

from pathlib import Path

from rto import distributed, models
from rto.algorithms.losses import sft_loss
from rto.config import SFTConfig
from rto.data.collate import collate_sft
from rto.data.formats import to_sft_examples
from rto.data.tokenize import tokenize_sft
from rto.trainers import checkpoints
from rto.trainers.supervised import SupervisedStage, setup_stage, train_supervised


def train_sft(cfg: SFTConfig) -> Path:
    acc, out, tokenizer, items = setup_stage(cfg, "sft", to_sft_examples, tokenize_sft)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, cfg.dtype)
    if cfg.lora:
        model = models.lora_wrap(model, cfg)
    pad = tokenizer.pad_token_id

    def loss_sums(model, batch_items):
        batch = {k: v.to(acc.device) for k, v in collate_sft(batch_items, pad).items()}
        logps = models.response_token_logps(model, batch["input_ids"], batch["attention_mask"])
        return sft_loss(logps, batch["completion_mask"][:, 1:]).total, {}

    def count(item) -> float:
        return float(sum(item["completion_mask"][1:]))

    result = train_supervised(cfg, acc, model, items, SupervisedStage("sft", loss_sums, count))
    checkpoints.save_hf_folder(acc, result["model"], tokenizer, out)
    distributed.finish(acc)
    return out
