"""`rto dpo`: Direct Preference Optimization against a frozen reference, and its relatives
(IPO, cDPO label smoothing, SimPO, R-DPO, TDPO) as preference learners whose token log-ratios can
serve as RTO's dense reward.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rto import distributed, models
from rto.algorithms.logprobs import sequence_logps, shifted_token_logprobs
from rto.algorithms.losses import dpo_loss, sequential_kl, tdpo_loss
from rto.config import DPOConfig
from rto.data.collate import collate_preference
from rto.data.formats import to_preference_examples
from rto.data.tokenize import tokenize_preference
from rto.trainers import checkpoints
from rto.trainers.supervised import SupervisedStage, setup_stage, train_supervised


def train_dpo(cfg: DPOConfig) -> Path:
    acc, out, tokenizer, items = setup_stage(cfg, "dpo", to_preference_examples, tokenize_preference)
    policy = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code, cfg.dtype)
    ref_path = cfg.ref_model or cfg.model
    if cfg.ref_model:
        models.require_same_vocabulary(
            tokenizer, models.load_tokenizer(cfg.ref_model, cfg.trust_remote_code), cfg.model, cfg.ref_model
        )
    needs_ref = cfg.loss_type != "simpo"
    ref = None
    if needs_ref:
        ref = models.freeze(models.load_causal_lm(ref_path, tokenizer, cfg.trust_remote_code, cfg.dtype))
        ref = distributed.prepare_frozen(acc, ref, offload=cfg.offload_frozen_models)
        models.disable_dropout(ref)
    if cfg.lora:
        policy = models.lora_wrap(policy, cfg)
    pad = tokenizer.pad_token_id

    def loss_sums(model, batch_items):
        n = len(batch_items)
        batch = {k: v.to(acc.device) for k, v in collate_preference(batch_items, pad).items()}
        ids, attn = batch["input_ids"], batch["attention_mask"]
        mask = batch["completion_mask"][:, 1:].bool()
        logits = models.causal_lm_logits(model, ids, attn)
        logps = sequence_logps(shifted_token_logprobs(logits, ids), mask)
        lengths = mask.sum(-1).float()
        ref_logps = torch.zeros_like(logps)
        ref_logits = None
        if ref is not None:
            with torch.no_grad():
                ref_logits = models.causal_lm_logits(ref, ids, attn)
                ref_logps = sequence_logps(shifted_token_logprobs(ref_logits, ids), mask)
        pc, pr, rc, rr = logps[:n], logps[n:], ref_logps[:n], ref_logps[n:]
        if cfg.loss_type == "tdpo":
            seq_kl = sequential_kl(logits[:, :-1], ref_logits[:, :-1], mask)
            losses, cw, rw = tdpo_loss(
                pc, pr, rc, rr, seq_kl[:n], seq_kl[n:], beta=cfg.beta, alpha=cfg.tdpo_alpha
            )
        else:
            extra = {}
            if cfg.loss_type in ("simpo", "rdpo", "ipo"):
                extra = {"chosen_lengths": lengths[:n], "rejected_lengths": lengths[n:]}
            if cfg.loss_type == "simpo":
                extra["simpo_gamma"] = cfg.simpo_gamma
            elif cfg.loss_type == "rdpo":
                extra["rdpo_alpha"] = cfg.rdpo_alpha
            elif cfg.loss_type == "ipo":
                extra["ipo_per_token"] = cfg.ipo_per_token
            losses, cw, rw = dpo_loss(
                pc,
                pr,
                rc,
                rr,
                beta=cfg.beta,
                loss_type=cfg.loss_type,
                label_smoothing=cfg.label_smoothing,
                **extra,
            )
        return losses.sum(), {
            "rewards/chosen": float(cw.sum()),
            "rewards/rejected": float(rw.sum()),
            "rewards/margins": float((cw - rw).sum()),
            "rewards/accuracies": float((cw > rw).float().sum()),
            "logps/chosen": float(pc.detach().sum()),
            "logps/rejected": float(pr.detach().sum()),
        }

    result = train_supervised(cfg, acc, policy, items, SupervisedStage("dpo", loss_sums, lambda item: 1.0))
    checkpoints.save_hf_folder(
        acc,
        result["model"],
        tokenizer,
        out,
        extra_config={"rto_dpo_beta": cfg.beta, "rto_dpo_loss": cfg.loss_type},
    )
    distributed.finish(acc)
    return out
