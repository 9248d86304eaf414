"""`rto sft`: next-token loss on completion tokens only (prompt tokens are context, not targets)."""

from __future__ import annotations

from pathlib import Path

from rto import models
from rto.config import SFTConfig, validate_config
from rto.data.collate import collate_sft
from rto.data.formats import to_sft_examples
from rto.data.loading import load_rows
from rto.data.tokenize import tokenize_all, tokenize_sft
from rto.trainers import common
from rto.trainers.supervised import SupervisedStage, train_supervised


def train_sft(cfg: SFTConfig) -> Path:
    validate_config(cfg)
    acc = common.make_accelerator(cfg)
    out = common.prepare_output_dir(acc, cfg)
    common.init_trackers(acc, cfg, "rto-sft")
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    examples = to_sft_examples(
        load_rows(cfg.data, cfg.split, cfg.data_subset), common.column_map(cfg), source=cfg.data
    )
    items, counts = tokenize_all(
        tokenize_sft, tokenizer, examples, source=cfg.data, max_length=cfg.max_length, overflow=cfg.overflow
    )
    common.report_counts(acc, "sft", cfg.data, counts)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code)
    if cfg.lora:
        model = models.lora_wrap(model, cfg)
    pad = tokenizer.pad_token_id

    def loss_sums(model, batch_items):
        batch = {k: v.to(acc.device) for k, v in collate_sft(batch_items, pad).items()}
        logps = models.response_token_logps(model, batch["input_ids"], batch["attention_mask"])
        mask = batch["completion_mask"][:, 1:].to(logps.dtype)
        nll = -(logps * mask).sum()
        return nll, {}

    def count(item) -> float:
        return float(sum(item["completion_mask"][1:]))

    result = train_supervised(cfg, acc, model, items, SupervisedStage("sft", loss_sums, count))
    common.save_hf_folder(acc, result["model"], tokenizer, out)
    common.finish(acc)
    return out
