"""`rto rm`: a Bradley-Terry reward model, loss -log sigmoid(r_chosen - r_rejected), on a one-label
sequence-classification head read at the last non-pad token.

After training, the mean and std of its scores on the training responses (chosen and rejected) are stored
in the model's config.json (`rto_score_mean`, `rto_score_std`) so PPO can normalise scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rto import distributed, models
from rto.algorithms.losses import bradley_terry_loss, reward_centering
from rto.config import RewardConfig
from rto.data.collate import collate_preference
from rto.data.formats import to_preference_examples
from rto.data.tokenize import tokenize_preference
from rto.trainers import checkpoints
from rto.trainers.supervised import SupervisedStage, setup_stage, train_supervised

log = logging.getLogger(__name__)


def preference_scores(
    model, batch_items: list[dict], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores) for a list of tokenized preference pairs, one forward pass."""
    batch = {k: v.to(device) for k, v in collate_preference(batch_items, pad_id).items()}
    scores = models.sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    n = len(batch_items)
    return scores[:n], scores[n:]


@torch.no_grad()
def measure_score_stats(acc, model, items: list[dict], pad_id: int, batch_size: int) -> tuple[float, float]:
    """Mean and std of the RM's scores over every training response, across all processes.

    no_grad rather than inference_mode: under FSDP2 the weights a forward gathers would become inference
    tensors, and the model's next forward with gradients would fail on them."""
    model.eval()
    s = sq = n = 0.0
    for mb, real in distributed.even_micro_batches(acc, items, batch_size):
        c, r = preference_scores(model, mb, pad_id, acc.device)
        if not real:  # a stand-in batch, so that every process runs as many forwards
            continue
        both = torch.cat([c, r]).double()
        s, sq, n = s + float(both.sum()), sq + float((both**2).sum()), n + both.numel()
    s, sq, n = distributed.global_sum(acc, [s, sq, n]).tolist()
    mean = s / n
    std = max(sq / n - mean**2, 0.0) ** 0.5
    return mean, std


def train_reward(cfg: RewardConfig) -> Path:
    acc, out, tokenizer, items = setup_stage(cfg, "rm", to_preference_examples, tokenize_preference)
    model = models.load_score_model(cfg.model, tokenizer, cfg.trust_remote_code, cfg.dtype, fresh_head=True)
    if cfg.lora:
        model = models.lora_wrap(model, cfg, task_type="SEQ_CLS")
    pad = tokenizer.pad_token_id

    def loss_sums(model, batch_items):
        c, r = preference_scores(model, batch_items, pad, acc.device)
        bt, correct = bradley_terry_loss(c, r)
        loss = bt.total
        if cfg.center_rewards_coefficient:
            loss = loss + cfg.center_rewards_coefficient * reward_centering(c, r).sum()
        c, r = c.detach(), r.detach()
        return loss, {
            "accuracy": float(correct),
            "rewards/chosen": float(c.sum()),
            "rewards/rejected": float(r.sum()),
            "rewards/margins": float((c - r).sum()),
        }

    result = train_supervised(cfg, acc, model, items, SupervisedStage("rm", loss_sums, lambda item: 1.0))
    mean, std = measure_score_stats(acc, result["model"], items, pad, cfg.per_device_batch_size)
    stats = {models.SCORE_MEAN_KEY: mean, models.SCORE_STD_KEY: std}
    if acc.is_main_process:
        log.info("reward model score stats on training responses: mean %.4f std %.4f", mean, std)
    checkpoints.save_hf_folder(acc, result["model"], tokenizer, out, extra_config=stats)
    distributed.finish(acc)
    return out
