"""The models of a PPO run, one object per scoring role (rto/scoring.py), loaded for the reward mode.

With --lora the models share bases instead of being copies: the policy is a LoRA adapter on the SFT model,
the reference is that base with adapters off, and a DPO model trained with --lora (its folder holds
`adapter/`) is a second, frozen adapter on the same base. The critic is a LoRA adapter (with its own copy of
the value head) on the reward model, whose scores are read with adapters off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rto import models, scoring
from rto.algorithms.estimators import ESTIMATORS
from rto.config import PPOConfig
from rto.engines import never_sampled
from rto.scoring import Critic, LogProbModel, RewardModel

log = logging.getLogger(__name__)


@dataclass
class Scorers:
    """The scoring roles of phase 2 (rto/scoring.py); None where the reward mode needs no such model."""

    policy: LogProbModel
    reference: LogProbModel
    dpo: LogProbModel | None
    critic: Critic | None
    reward: RewardModel | None

    def frozen_roles(self) -> list:
        """The roles that hold a frozen model of their own (not an adapter of a trained model's base)."""
        roles = (self.reference, self.dpo, self.reward)
        return [r for r in roles if r is not None and r.own_model is not None]


@dataclass
class PPOModels:
    tokenizer: Any
    policy: Any  # the trained policy (a peft model with --lora)
    critic: Any | None  # the trained critic (estimators that need one: gae)
    scorers: Scorers


def load_models(cfg: PPOConfig) -> PPOModels:
    """Load every model the reward mode needs (in a fixed order: fresh heads and LoRA weights draw from
    the seeded RNG)."""
    trc, T = cfg.trust_remote_code, cfg.temperature
    tok = models.load_tokenizer(cfg.policy, trc, padding_side="left")
    X = never_sampled(tok.eos_token_id, tok.pad_token_id)  # scored as sampled: without the pad token
    policy = models.load_causal_lm(cfg.policy, tok, trc, cfg.dtype)
    if cfg.ref_model:
        models.require_same_vocabulary(
            tok, models.load_tokenizer(cfg.ref_model, trc), "policy", "reference model"
        )
    if cfg.lora:
        policy = models.lora_wrap(policy, cfg)
    shared_ref = cfg.lora and not cfg.ref_model
    reference = scoring.reference_model(
        policy, tok, T, cfg.ref_model or cfg.policy, shared_ref, trc, cfg.dtype, excluded_ids=X
    )
    dpo = None
    if cfg.reward_mode != "ppo":
        dpo = scoring.dpo_model(policy, tok, T, cfg.dpo_model, cfg.lora, trc, cfg.dtype, excluded_ids=X)
    reward = None
    if cfg.reward_mode != "dpo-only":
        reward = RewardModel.load(
            cfg.reward_model, tok, trc, normalize=cfg.normalize_rm_score, dtype=cfg.dtype
        )
    critic = None
    if ESTIMATORS[cfg.advantage].needs_critic:
        critic, reward = load_critic(cfg, tok, reward)
    for m in (policy, critic, *(r.own_model for r in (reference, dpo, reward) if r is not None)):
        if m is not None:
            models.disable_dropout(m)
    scorers = Scorers(
        policy=LogProbModel(policy, T, excluded_ids=X),
        reference=reference,
        dpo=dpo,
        critic=Critic(critic) if critic is not None else None,
        reward=reward,
    )
    return PPOModels(tokenizer=tok, policy=policy, critic=critic, scorers=scorers)


def load_critic(cfg: PPOConfig, tok, reward: RewardModel | None) -> tuple[Any, RewardModel | None]:
    """The critic to train, and the reward role (changed when the critic takes over the reward model).

    From --critic if given; else from the reward model (backbone and value head) when it shares the
    policy's tokenizer -- with --lora as an adapter on the reward model itself, which then scores with
    adapters off; else from the policy with a fresh value head."""
    trc = cfg.trust_remote_code
    in_critic = False
    if cfg.critic:
        critic = models.load_score_model(cfg.critic, tok, trc, cfg.dtype, fresh_head=True)
        models.require_same_vocabulary(tok, models.load_tokenizer(cfg.critic, trc), "policy", "critic")
    elif reward is None or reward.kind == "model":
        if cfg.lora and reward is not None:
            critic, in_critic = reward.model.requires_grad_(True), True
        else:
            critic = models.load_score_model(cfg.reward_model, tok, trc, cfg.dtype)
    else:
        log.warning(
            "the reward model's tokenizer differs from the policy's, so the critic cannot start from it: "
            "starting the critic from the policy with a fresh value head"
        )
        critic = models.load_score_model(cfg.policy, tok, trc, cfg.dtype, fresh_head=True)
    if cfg.lora:
        critic = models.lora_wrap(critic, cfg, task_type="SEQ_CLS")
        if in_critic:
            reward = RewardModel(critic, "critic-base", reward.mean, reward.std, tokenizer=reward.tokenizer)
    return critic, reward


__all__ = ["PPOModels", "Scorers", "load_critic", "load_models"]
