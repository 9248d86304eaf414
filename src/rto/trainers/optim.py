"""The optimizer (AdamW over the trainable parameters) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler


def make_optimizer(params, lr: float, cfg) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )


def make_scheduler(optimizer, cfg, total_steps: int):
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
