"""`rto ppo`: PPO with token-wise rewards — RTO, PPO and the paper's variants.

One iteration reads top to bottom:

1. rollout    sample one response per prompt from the current policy (the rollout engine, rto/engines/);
2. score      policy (old), reference, DPO model log-probs of the sampled tokens, critic values,
              reward-model score at the last valid token (re-tokenized when the RM has its own tokenizer);
3. rewards    per-token rewards of the chosen mode (algorithms/rewards.py);
4. advantages GAE with the critic, or REINFORCE++ returns-to-go, whitened over the global batch;
5. update     `ppo_epochs` passes of clipped policy and value losses over global mini-batches.

Multi-process: each process generates and scores its share of the global prompt batch; the rollout is
then gathered so every process holds the whole global batch. Whitening and metrics are therefore global,
and mini-batches are the same global sets of samples whatever the number of processes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rto import distributed, models
from rto.algorithms.advantages import explained_variance, gae, masked_whiten, reinforce_pp_advantages
from rto.algorithms.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rto.algorithms.logprobs import entropy_from_logits, masked_mean, shifted_token_logprobs
from rto.algorithms.losses import ppo_policy_loss, value_loss
from rto.algorithms.rewards import compose_token_rewards
from rto.config import PPOConfig, validate_config
from rto.data.collate import collate_prompts, pad_sequences
from rto.data.formats import ColumnMap, to_prompt_examples
from rto.data.loading import load_rows
from rto.data.tokenize import encode_completion, encode_prompt, tokenize_all, tokenize_prompt
from rto.engines import Rollout, SamplingSettings, make_engine, sample_seeds
from rto.errors import NonFiniteError, RtoError
from rto.trainers import checkpoints, data_order, guards, metrics, optim, signals

log = logging.getLogger(__name__)

# Hook called after each rollout with (iteration, prompt texts, response texts); returns extra metrics.
RolloutHook = Callable[[int, list[str], list[str]], dict[str, float]]


@dataclass
class Models:
    policy: Any
    ref: Any
    dpo: Any | None
    reward: Any | None
    critic: Any | None
    tokenizer: Any
    reward_tokenizer: Any | None
    reward_same_tokens: bool
    score_mean: float
    score_std: float
    ref_adapter: str | None = None  # "__base__": the reference is the policy's base with adapters off
    dpo_adapter: str | None = None  # the DPO model is this frozen adapter on the policy's base
    reward_in_critic: bool = False  # the RM is the critic's base with adapters off

    @property
    def has_reward(self) -> bool:
        return self.reward is not None or self.reward_in_critic


# ----------------------------------------------------------------------------- setup


def load_models(cfg: PPOConfig) -> Models:
    """Load every model the reward mode needs.

    With --lora the models share bases instead of being copies: the policy is a LoRA adapter on the SFT
    model, the reference is that base with adapters off, and a DPO model trained with --lora (its folder
    holds `adapter/`) is a second, frozen adapter on the same base. The critic is a LoRA adapter (with
    its own copy of the value head) on the reward model, whose scores are read with adapters off.
    """
    trc = cfg.trust_remote_code
    tok = models.load_tokenizer(cfg.policy, trc, padding_side="left")
    policy = models.load_causal_lm(cfg.policy, tok, trc, cfg.dtype)
    if cfg.ref_model:
        models.require_same_vocabulary(
            tok, models.load_tokenizer(cfg.ref_model, trc), "policy", "reference model"
        )
    if cfg.lora:
        policy = models.lora_wrap(policy, cfg)
    shared_ref = cfg.lora and not cfg.ref_model
    ref = (
        None
        if shared_ref
        else models.freeze(models.load_causal_lm(cfg.ref_model or cfg.policy, tok, trc, cfg.dtype))
    )
    dpo = None
    dpo_adapter = None
    if cfg.reward_mode != "ppo":
        models.require_same_vocabulary(tok, models.load_tokenizer(cfg.dpo_model, trc), "policy", "DPO model")
        adapter_path = models.adapter_folder(cfg.dpo_model) if cfg.lora else None
        if adapter_path is not None:
            policy.load_adapter(str(adapter_path), adapter_name="dpo", is_trainable=False)
            dpo_adapter = "dpo"
            log.info("DPO model loaded as a frozen adapter on the shared base: %s", adapter_path)
        else:
            dpo = models.freeze(models.load_causal_lm(cfg.dpo_model, tok, trc, cfg.dtype))
    reward = rtok = None
    same = True
    mean, std = 0.0, 1.0
    if cfg.reward_mode != "dpo-only":
        rtok = models.load_tokenizer(cfg.reward_model, trc, padding_side="right")
        same = models.same_vocabulary(tok, rtok)
        reward = models.freeze(models.load_score_model(cfg.reward_model, rtok, trc, cfg.dtype))
        if cfg.normalize_rm_score:
            mean, std = models.score_stats(reward, cfg.reward_model)
        if not same:
            log.info("reward model has its own tokenizer: responses are re-tokenized for it")
    critic = None
    reward_in_critic = False
    if cfg.advantage == "gae":
        if cfg.critic:
            critic = models.load_score_model(cfg.critic, tok, trc, cfg.dtype)
            models.require_same_vocabulary(tok, models.load_tokenizer(cfg.critic, trc), "policy", "critic")
        elif same:
            if cfg.lora and reward is not None:
                critic, reward, reward_in_critic = reward.requires_grad_(True), None, True
            else:
                critic = models.load_score_model(cfg.reward_model, tok, trc, cfg.dtype)
        else:
            log.warning(
                "the reward model's tokenizer differs from the policy's, so the critic cannot start from it: "
                "starting the critic from the policy with a fresh value head"
            )
            critic = models.load_score_model(cfg.policy, tok, trc, cfg.dtype)
        if cfg.lora:
            critic = models.lora_wrap(critic, cfg, task_type="SEQ_CLS")
    for m in (policy, ref, dpo, reward, critic):
        if m is not None:
            models.disable_dropout(m)
    return Models(
        policy, ref, dpo, reward, critic, tok, rtok, same, mean, std,
        ref_adapter="__base__" if shared_ref else None, dpo_adapter=dpo_adapter, reward_in_critic=reward_in_critic,
    )  # fmt: skip


def delimiter_table(tokenizer, delimiters: str) -> torch.Tensor:
    """(V,) bool: the token's decoded text, trailing spaces removed, ends with a delimiter character."""
    table = torch.zeros(len(tokenizer), dtype=torch.bool)
    if not delimiters:
        return table
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]).rstrip(" ")
        table[i] = bool(text) and text[-1] in delimiters
    return table


# ----------------------------------------------------------------------------- scoring


@dataclass
class Experience:
    """A scored rollout. Token tensors are (B, R), aligned with response tokens."""

    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    prompt_len: int
    mask: torch.Tensor  # (B, R) long
    ended: torch.Tensor  # (B,) bool
    logps: torch.Tensor
    ref_logps: torch.Tensor
    dpo_logps: torch.Tensor | None
    values: torch.Tensor | None
    scores: torch.Tensor  # (B,) raw RM scores (zeros in dpo-only)
    sample_index: torch.Tensor  # (B,) position in the global rollout batch


def response_logps(model, ids, attn, prompt_len: int, temperature: float, adapter: str | None = None):
    """Log-probs of the response tokens (B, R): logits at position t score token t+1."""
    return models.response_token_logps(model, ids, attn, temperature, adapter=adapter)[:, prompt_len - 1 :]


@torch.inference_mode()
def score_rollout(cfg: PPOConfig, ms: Models, policy, critic, roll: Rollout, prompts, sample_index, device):
    ids, attn, P = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1]
    logps = response_logps(policy, ids, attn, P, cfg.temperature)
    if ms.ref_adapter:  # shared base: the reference is the policy with adapters off
        ref_logps = response_logps(policy, ids, attn, P, cfg.temperature, adapter=ms.ref_adapter)
    else:
        ref_logps = response_logps(ms.ref, ids, attn, P, cfg.temperature)
    dpo_logps = None
    if ms.dpo_adapter:
        dpo_logps = response_logps(policy, ids, attn, P, cfg.temperature, adapter=ms.dpo_adapter)
    elif ms.dpo is not None:
        dpo_logps = response_logps(ms.dpo, ids, attn, P, cfg.temperature)
    values = None
    if critic is not None:
        values = models.token_scores(critic, ids, attn)[:, P - 1 : P - 1 + roll.response_ids.shape[1]]
    if ms.reward_in_critic:  # shared base: the reward model is the critic with adapters off
        with critic.disable_adapter():
            scores = models.sequence_scores(critic, ids, attn)
    elif ms.reward is None:
        scores = torch.zeros(ids.shape[0], device=device)
    elif ms.reward_same_tokens:
        scores = models.sequence_scores(ms.reward, ids, attn)
    else:
        scores = rescore_with_own_tokenizer(ms, prompts, roll, device)
    return Experience(
        ids,
        attn,
        P,
        roll.response_mask,
        roll.ended,
        logps,
        ref_logps,
        dpo_logps,
        values,
        scores,
        sample_index,
    )


def rescore_with_own_tokenizer(ms: Models, prompts: list, roll: Rollout, device) -> torch.Tensor:
    """Score (prompt, response) with a reward model that has its own tokenizer: render the prompt with the
    RM's tokenizer (its chat template, if any) and re-tokenize the decoded response text."""
    rtok = ms.reward_tokenizer
    texts = ms.tokenizer.batch_decode(roll.response_ids, skip_special_tokens=True)
    seqs = []
    for prompt, text, ended in zip(prompts, texts, roll.ended.tolist()):
        completion = encode_completion(rtok, text)
        if not ended and completion and completion[-1] == rtok.eos_token_id:
            completion = completion[:-1]  # a truncated response did not end: do not pretend it did
        seqs.append(encode_prompt(rtok, prompt) + completion)
    ids = pad_sequences(seqs, rtok.pad_token_id, side="right").to(device)
    attn = (pad_sequences([[1] * len(s) for s in seqs], 0, side="right")).to(device)
    return models.sequence_scores(ms.reward, ids, attn)


def gather_experience(acc, exp: Experience, pad_id: int) -> Experience:
    """Every process gets the whole global batch (prompts left-padded, responses right-padded)."""
    if acc.num_processes == 1:
        return exp
    P, R = exp.prompt_len, exp.mask.shape[1]
    sizes = distributed.global_sum(
        acc, [0] * acc.process_index + [P] + [0] * (acc.num_processes - acc.process_index - 1)
    )
    P_max = int(max(sizes.tolist()))

    def left(t, value):
        return torch.nn.functional.pad(t, (P_max - P, 0), value=value)

    ids = torch.cat([left(exp.input_ids[:, :P], pad_id), exp.input_ids[:, P:]], 1)
    attn = torch.cat([left(exp.attention_mask[:, :P], 0), exp.attention_mask[:, P:]], 1)
    row = {"ids": ids, "attn": attn}
    tok_fields = {"mask": exp.mask, "logps": exp.logps, "ref_logps": exp.ref_logps}
    if exp.dpo_logps is not None:
        tok_fields["dpo_logps"] = exp.dpo_logps
    if exp.values is not None:
        tok_fields["values"] = exp.values
    out = {}
    for k, t in {**row, **tok_fields}.items():
        fill = pad_id if k == "ids" else 0
        out[k] = acc.gather(acc.pad_across_processes(t, dim=1, pad_index=fill))
    for k in ("ended", "scores", "sample_index"):
        out[k] = acc.gather(getattr(exp, k))
    del R
    return Experience(
        out["ids"], out["attn"], P_max, out["mask"], out["ended"], out["logps"], out["ref_logps"],
        out.get("dpo_logps"), out.get("values"), out["scores"], out["sample_index"],
    )  # fmt: skip


# ----------------------------------------------------------------------------- rewards and advantages


@dataclass
class Targets:
    rewards: Any  # TokenRewards
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    norm_scores: torch.Tensor


def compute_targets(
    cfg: PPOConfig, ms: Models, exp: Experience, kl_coef: float, delim: torch.Tensor
) -> Targets:
    mask = exp.mask.bool()
    kl = kl_penalty(exp.logps, exp.ref_logps, cfg.kl_estimator) * mask
    scores = exp.scores
    if cfg.normalize_rm_score and ms.has_reward:
        scores = (scores - ms.score_mean) / ms.score_std
    scores = scores.clamp(-cfg.rm_score_clamp, cfg.rm_score_clamp)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~exp.ended).float()
    response_ids = exp.input_ids[:, exp.prompt_len :]
    logratio = None if exp.dpo_logps is None else (exp.dpo_logps - exp.ref_logps) * mask
    rewards = compose_token_rewards(
        cfg.reward_mode,
        mask,
        kl,
        rm_scores=scores if ms.has_reward else None,
        dpo_logratio=logratio,
        beta1=cfg.beta1,
        beta2=kl_coef,
        beta3=cfg.beta3,
        dpo_reward_clip=cfg.dpo_reward_clip,
        sentence_end_mask=delim.to(response_ids.device)[response_ids] & mask
        if cfg.reward_mode == "semi-rto"
        else None,
    )
    token_rewards = rewards.total
    if cfg.whiten_rewards:
        token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
    # The experience is the gathered global batch on every process, so these statistics are global.
    if cfg.advantage == "gae":
        adv, returns = gae(token_rewards, exp.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        adv = masked_whiten(adv, mask)
    else:
        adv = reinforce_pp_advantages(token_rewards, mask, gamma=cfg.gamma)
        returns = adv
    return Targets(rewards, adv, returns, kl, scores)


# ----------------------------------------------------------------------------- the trainer


@signals.restores_signal_handlers
def train_ppo(cfg: PPOConfig, rollout_hook: RolloutHook | None = None) -> Path:
    """Train; returns the output folder (policy there, critic in ./critic)."""
    validate_config(cfg)
    acc = distributed.make_accelerator(cfg)
    distributed.require_support(acc, "ppo", with_critic=cfg.advantage == "gae")
    if cfg.mini_batch_size % acc.num_processes:
        raise RtoError(
            f"field 'mini_batch_size' ({cfg.mini_batch_size}) must be divisible by the number of processes "
            f"({acc.num_processes})"
        )
    out = checkpoints.prepare_output_dir(acc, cfg)
    metrics.init_trackers(acc, cfg, "rto-ppo")
    ms = load_models(cfg)
    tok = ms.tokenizer
    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
    examples = to_prompt_examples(
        load_rows(cfg.prompts, cfg.split, cfg.data_subset), ColumnMap.from_config(cfg), source=cfg.prompts
    )
    items, counts = tokenize_all(
        tokenize_prompt,
        tok,
        examples,
        source=cfg.prompts,
        max_prompt_length=cfg.max_prompt_length,
        overflow=cfg.overflow,
    )
    metrics.report_counts(acc, "ppo prompts", cfg.prompts, counts)
    if len(items) < cfg.rollout_batch_size:
        raise RtoError(
            f"{cfg.prompts}: {len(items)} prompts, fewer than rollout_batch_size ({cfg.rollout_batch_size})"
        )
    if cfg.rollout_batch_size % acc.num_processes:
        raise RtoError(
            f"rollout_batch_size ({cfg.rollout_batch_size}) must divide over {acc.num_processes} processes"
        )

    steps_per_iter = cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size)
    total_steps = cfg.num_iterations * steps_per_iter
    actor_opt = optim.make_optimizer(ms.policy.parameters(), cfg.actor_lr, cfg)
    actor_sched = optim.make_scheduler(actor_opt, cfg, total_steps)
    if cfg.gradient_checkpointing:
        ms.policy.gradient_checkpointing_enable()
    if ms.critic is not None:
        critic_opt = optim.make_optimizer(ms.critic.parameters(), cfg.critic_lr, cfg)
        critic_sched = optim.make_scheduler(critic_opt, cfg, total_steps)
        policy, critic, actor_opt, critic_opt = distributed.prepare_trained(
            acc, ms.policy, ms.critic, actor_opt, critic_opt, schedulers=[actor_sched, critic_sched]
        )
    else:
        critic = critic_opt = critic_sched = None
        policy, actor_opt = distributed.prepare_trained(acc, ms.policy, actor_opt, schedulers=[actor_sched])
    ms.ref, ms.dpo, ms.reward = (distributed.prepare_frozen(acc, m) for m in (ms.ref, ms.dpo, ms.reward))
    settings = SamplingSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, eos_id, pad_id)
    engine = make_engine(cfg.engine, lambda: policy, settings)
    guard = guards.SkipGuard(cfg)  # on_nonfinite: stop, or skip with a limit on skips in a row
    kl_ctl = (
        AdaptiveKLController(cfg.beta2, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.beta2)
    )
    delim = (
        delimiter_table(tok, cfg.sentence_delimiters)
        if cfg.reward_mode == "semi-rto"
        else torch.zeros(0, dtype=torch.bool)
    )

    start = 0
    if cfg.resume:
        state = checkpoints.load_latest_checkpoint(acc, cfg.output_dir)
        if state is not None:
            start = state["step"]
            kl_ctl.load_state_dict(state["kl_controller"])
    metrics_log = metrics.MetricsLog(acc, out, resume_step=start if cfg.resume else None)
    bar = metrics.progress_bar(acc, cfg, cfg.num_iterations, f"rto ppo ({cfg.reward_mode})", initial=start)
    rollouts_path = out / "rollouts.jsonl"
    if acc.is_main_process and not cfg.resume and rollouts_path.exists():
        rollouts_path.unlink()
    if acc.is_main_process and cfg.resume:
        metrics.truncate_jsonl(rollouts_path, "iteration", start)  # later iterations are redone

    prompt_batches = data_order.global_batches(len(items), cfg.rollout_batch_size, cfg.seed, start_step=start)
    stop = signals.GracefulStop().install()  # SIGTERM/Ctrl-C: checkpoint at the next iteration boundary
    for it, indices in prompt_batches:
        if it >= cfg.num_iterations:
            break
        kl_state = {"kl_controller": kl_ctl.state_dict()}
        checkpoints.stop_if_requested(acc, stop, out, it, kl_state, cfg.save_total_limit)
        t0 = time.perf_counter()
        # 1. rollout --------------------------------------------------------------------------------
        share = data_order.process_share(list(enumerate(indices)), acc)
        local_items = [items[i] for _, i in share]
        sample_index = torch.tensor([g for g, _ in share], dtype=torch.long)
        batch = collate_prompts(local_items, pad_id)
        engine.sync_weights(policy)  # the engine samples from the weights of the last update
        roll = engine.generate(
            batch["input_ids"], batch["attention_mask"], sample_seeds(cfg.seed, it, sample_index)
        )
        t1 = time.perf_counter()
        signals.pause_point("rollout", it + 1)
        # 2. score ----------------------------------------------------------------------------------
        exp = score_rollout(
            cfg,
            ms,
            acc.unwrap_model(policy),
            acc.unwrap_model(critic) if critic is not None else None,
            roll,
            [it_["prompt"] for it_ in local_items],
            sample_index.to(acc.device),
            acc.device,
        )
        exp = gather_experience(acc, exp, pad_id)
        t2 = time.perf_counter()
        # 3-4. rewards and advantages ------------------------------------------------------------------
        tg = compute_targets(cfg, ms, exp, kl_ctl.value, delim)
        step_no = it + 1
        valid = exp.mask.bool()
        bad = guards.first_nonfinite(
            {
                "reward-model scores": exp.scores,
                "policy log-probs": exp.logps[valid],
                "reference log-probs": exp.ref_logps[valid],
                "DPO log-probs": None if exp.dpo_logps is None else exp.dpo_logps[valid],
                "critic values": None if exp.values is None else exp.values[valid],
                "token rewards": tg.rewards.total,
                "advantages": tg.advantages,
                "returns": tg.returns,
            }
        )
        if bad is not None:  # stop, or skip this iteration's update (on_nonfinite)
            guard.skip(NonFiniteError(f"non-finite {bad} at iteration {step_no}"))
            bar.update(1)
            continue
        hook_metrics = {}
        if rollout_hook is not None:
            prompts_text = tok.batch_decode(exp.input_ids[:, : exp.prompt_len], skip_special_tokens=True)
            responses_text = tok.batch_decode(exp.input_ids[:, exp.prompt_len :], skip_special_tokens=True)
            hook_metrics = rollout_hook(it, prompts_text, responses_text)
        if cfg.dump_rollouts and it % cfg.dump_rollouts == 0 and acc.is_main_process:
            dump_rollout(rollouts_path, it, tok, exp, tg)
        # 5. update ---------------------------------------------------------------------------------
        train_actor = it >= cfg.critic_warmup_iterations
        upd = ppo_update(
            cfg,
            acc,
            policy,
            critic,
            actor_opt,
            critic_opt,
            actor_sched,
            critic_sched,
            exp,
            tg,
            it,
            train_actor,
            guard,
        )
        t3 = time.perf_counter()
        # metrics ----------------------------------------------------------------------------------------
        mask = exp.mask.bool()
        seq_kl = (tg.kl * mask).sum(-1)
        kl_ctl.update(float(seq_kl.mean()), cfg.rollout_batch_size)
        n_tokens = int(mask.sum())
        row = {
            "iteration": step_no,
            "score": float(exp.scores.mean()),
            "score_normalized": float(tg.norm_scores.mean()),
            "dpo_reward": float(tg.rewards.dpo.sum(-1).mean()),
            "kl": float(seq_kl.mean()),
            "kl_k3": float((kl_penalty(exp.logps, exp.ref_logps, "k3") * mask).sum(-1).mean()),
            "kl_coef": kl_ctl.value,
            "token_reward_total": float(tg.rewards.total.sum(-1).mean()),
            "response_length": float(mask.sum(-1).float().mean()),
            "eos_rate": float(exp.ended.float().mean()),
            "advantages_mean": float(masked_mean(tg.advantages, mask)),
            "returns_mean": float(masked_mean(tg.returns, mask)),
            "lr_actor": actor_sched.get_last_lr()[0],
            "time_generate_s": t1 - t0,
            "time_score_s": t2 - t1,
            "time_train_s": t3 - t2,
            "tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
            **upd,
            **hook_metrics,
        }
        if exp.values is not None:
            row["explained_variance"] = explained_variance(exp.values, tg.returns, mask)
            row["values_mean"] = float(masked_mean(exp.values, mask))
            row["lr_critic"] = critic_sched.get_last_lr()[0]
        if step_no % cfg.logging_steps == 0 or step_no == cfg.num_iterations:
            metrics_log.log(step_no, row)
        bar.update(1)
        bar.set_postfix(score=f"{row['score']:.3f}", kl=f"{row['kl']:.3f}")
        if cfg.save_steps and step_no % cfg.save_steps == 0 and step_no < cfg.num_iterations:
            checkpoints.save_checkpoint(
                acc, out, step_no, {"kl_controller": kl_ctl.state_dict()}, cfg.save_total_limit
            )
    bar.close()
    engine.close()
    checkpoints.save_hf_folder(acc, policy, tok, out)
    if critic is not None:
        checkpoints.save_hf_folder(acc, critic, tok, out / "critic")
    distributed.finish(acc)
    return out


# Update statistics that are means over tokens: reported as means over every token of every process.
TOKEN_MEAN_STATS = frozenset({"entropy", "clipfrac", "approx_kl", "ratio_mean", "vf_clipfrac"})


def ppo_update(
    cfg,
    acc,
    policy,
    critic,
    actor_opt,
    critic_opt,
    actor_sched,
    critic_sched,
    exp,
    tg,
    it,
    train_actor,
    guard=None,
):
    """ppo_epochs passes over global mini-batches; each process takes its contiguous share of each.
    ``guard`` counts skipped updates across iterations (the trainer's; a fresh one if not given)."""
    guard = guard or guards.SkipGuard(cfg)
    N = exp.input_ids.shape[0]
    mb = cfg.mini_batch_size
    local_mb = mb // acc.num_processes
    micro = cfg.per_device_micro_batch_size or local_mb
    P = exp.prompt_len
    sums: dict[str, float] = {}  # per-sequence means, weighted by the micro-batch's share of sequences
    tok_sums: dict[str, float] = {}  # per-token means, weighted by token counts: global token means
    n_tokens = 0.0
    n_updates = 0
    policy.train()
    if critic is not None:
        critic.train()
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + it * 131 + epoch)
        order = torch.randperm(N, generator=g) if epoch > 0 else torch.arange(N)
        for start in range(0, N, mb):
            rows = order[start : start + mb]
            rows = rows[acc.process_index * local_mb : (acc.process_index + 1) * local_mb]
            chunks = [rows[i : i + micro] for i in range(0, len(rows), micro)]
            for k, r in enumerate(chunks):
                r = r.to(exp.input_ids.device)
                ids, attn, mask = exp.input_ids[r], exp.attention_mask[r], exp.mask[r].bool()
                R = mask.shape[1]
                weight = len(r) / local_mb  # seq-then-batch mean over the local mini-batch share
                sync = k == len(chunks) - 1
                stats: dict[str, float] = {}
                if train_actor:
                    with distributed.accumulation_step(acc, policy, last=sync):
                        logits = models.causal_lm_logits(policy, ids, attn)
                        logps = shifted_token_logprobs(logits, ids, cfg.temperature)[:, P - 1 :]
                        pl, pstats = ppo_policy_loss(
                            logps, exp.logps[r], tg.advantages[r], mask, cfg.clip_eps
                        )
                        pl_value = float(pl.detach())
                        if not math.isfinite(pl_value) and cfg.on_nonfinite == "stop":  # skip: see grads
                            raise guards.nonfinite_error(cfg, f"non-finite policy loss at iteration {it + 1}")
                        acc.backward(pl * weight)
                    with torch.no_grad():
                        ent = masked_mean(
                            entropy_from_logits(logits[:, P - 1 : -1].detach(), cfg.temperature), mask
                        )
                    stats.update(
                        policy_loss=pl_value,
                        entropy=float(ent),
                        **{k2: float(v) for k2, v in pstats.items()},
                    )
                if critic is not None:
                    with distributed.accumulation_step(acc, critic, last=sync):
                        values = models.token_scores(critic, ids, attn)[:, P - 1 : P - 1 + R]
                        vl, vstats = value_loss(values, exp.values[r], tg.returns[r], mask, cfg.value_clip)
                        if not torch.isfinite(vl) and cfg.on_nonfinite == "stop":  # skip: see grads
                            raise guards.nonfinite_error(cfg, f"non-finite value loss at iteration {it + 1}")
                        acc.backward(vl * weight)
                    stats.update(value_loss=float(vl.detach()), **{k2: float(v) for k2, v in vstats.items()})
                n_tok = float(mask.sum())
                n_tokens += n_tok
                for k2, v in stats.items():
                    if k2 in TOKEN_MEAN_STATS:
                        tok_sums[k2] = tok_sums.get(k2, 0.0) + v * n_tok
                    else:
                        sums[k2] = sums.get(k2, 0.0) + v * weight
            # one optimizer step per global mini-batch
            try:
                if train_actor:
                    sums["grad_norm_actor"] = sums.get("grad_norm_actor", 0.0) + guards.clip_and_check_grads(
                        acc, policy, cfg.max_grad_norm, it + 1, "policy"
                    )
                if critic is not None:
                    sums["grad_norm_critic"] = sums.get(
                        "grad_norm_critic", 0.0
                    ) + guards.clip_and_check_grads(acc, critic, cfg.max_grad_norm, it + 1, "critic")
            except NonFiniteError as err:
                guard.skip(err)
                actor_opt.zero_grad(set_to_none=True)
                if critic_opt is not None:
                    critic_opt.zero_grad(set_to_none=True)
                continue
            guard.ok()
            if train_actor:
                actor_opt.step()
            actor_sched.step()
            actor_opt.zero_grad(set_to_none=True)
            if critic is not None:
                critic_opt.step()
                critic_sched.step()
                critic_opt.zero_grad(set_to_none=True)
            n_updates += 1
    policy.eval()
    if critic is not None:
        critic.eval()
    keys, tok_keys = sorted(sums), sorted(tok_sums)
    totals = distributed.global_sum(
        acc, [sums[k] for k in keys] + [tok_sums[k] for k in tok_keys] + [n_tokens]
    ).tolist()
    denom = max(n_updates, 1) * acc.num_processes
    row = {k: v / denom for k, v in zip(keys, totals)}
    row.update({k: v / max(totals[-1], 1.0) for k, v in zip(tok_keys, totals[len(keys) : -1])})
    return row


def dump_rollout(path: Path, it: int, tok, exp: Experience, tg: Targets) -> None:
    """Append one JSON record per sample: texts, ids and every per-token quantity behind the update."""
    P = exp.prompt_len
    with path.open("a") as f:
        for b in range(exp.input_ids.shape[0]):
            n = int(exp.mask[b].sum())
            prompt_ids = exp.input_ids[b, :P][exp.attention_mask[b, :P].bool()].tolist()
            resp_ids = exp.input_ids[b, P : P + n].tolist()

            def seq(t, n=n, b=b):
                return None if t is None else [round(float(x), 6) for x in t[b, :n]]

            rec = {
                "iteration": it + 1,
                "sample": int(exp.sample_index[b]),
                "prompt": tok.decode(prompt_ids, skip_special_tokens=True),
                "response": tok.decode(resp_ids, skip_special_tokens=True),
                "prompt_ids": prompt_ids,
                "response_ids": resp_ids,
                "response_tokens": [tok.decode([i]) for i in resp_ids],
                "ended": bool(exp.ended[b]),
                "rm_score": float(exp.scores[b]),
                "rm_score_normalized": float(tg.norm_scores[b]),
                "logps": seq(exp.logps),
                "ref_logps": seq(exp.ref_logps),
                "dpo_logps": seq(exp.dpo_logps),
                "values": seq(exp.values),
                "rewards": seq(tg.rewards.total),
                "reward_kl": seq(tg.rewards.kl),
                "reward_dpo": seq(tg.rewards.dpo),
                "reward_score": seq(tg.rewards.score),
                "reward_shaping_correction": seq(tg.rewards.shaping_correction),
                "advantages": seq(tg.advantages),
                "returns": seq(tg.returns),
            }
            f.write(json.dumps(rec) + "\n")


__all__ = ["train_ppo", "compute_targets", "score_rollout", "load_models"]
