"""`rto ppo`: PPO with token-wise rewards — RTO, PPO and the paper's variants.

``setup_ppo(cfg)`` builds a run (`PPORun`: accelerator, models, optimizers, rollout engine, prompts,
KL controller); ``ppo_iteration(run, ...)`` is one iteration; ``train_ppo`` chains them with logging,
checkpoints and stopping on a signal. `rto bench` times the same ``ppo_iteration``. One iteration reads
top to bottom:

1. rollout    sample `num_samples_per_prompt` responses per prompt from the current policy (the rollout
              engine, per-sample seeds);
2. score      policy (old), reference, DPO model log-probs of the sampled tokens, critic values,
              reward-model score at the last valid token (one object per role: rto/scoring.py);
3. rewards    per-token rewards of the chosen mode (algorithms/rewards.py);
4. advantages the estimator of `--advantage` (algorithms/estimators.py): GAE with the critic, REINFORCE++,
              or a group baseline over the `num_samples_per_prompt` responses of each prompt;
5. update     `ppo_epochs` passes of clipped policy and value losses over global mini-batches, each loss a
              sum divided by the count of the whole global mini-batch (`loss_aggregation`).

Multi-process: each process generates and scores its share of the global prompt batch; the rollout is
then gathered so every process holds the whole global batch. Whitening and metrics are therefore global,
and mini-batches are the same global sets of samples whatever the number of processes.

One module on purpose (about 600 lines): setup, one iteration's five phases and the update read top to
bottom here; the models and scoring roles (ppo_models.py, rto/scoring.py), the experience record
(experience.py), the estimators (algorithms/), checkpoints, metrics and distribution live elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rto import distributed, jsonl, models, scoring
from rto.algorithms.advantages import explained_variance, masked_whiten
from rto.algorithms.estimators import ESTIMATORS, estimate_advantages
from rto.algorithms.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rto.algorithms.logprobs import entropy_from_logits, masked_mean, shifted_token_logprobs
from rto.algorithms.losses import aggregation_count, policy_loss_sum, value_loss_sum
from rto.algorithms.rewards import compose_token_rewards
from rto.algorithms.rollout_correction import logprob_mismatch, truncated_is_weights
from rto.config import PPOConfig
from rto.data.collate import collate_prompts
from rto.data.formats import ColumnMap, to_prompt_examples
from rto.data.loading import load_rows
from rto.data.tokenize import tokenize_all, tokenize_prompt
from rto.engines import Rollout, RolloutEngine, SamplingSettings, make_engine, sample_seeds
from rto.errors import NonFiniteError, RtoError
from rto.hub import check_config_sources
from rto.scoring import RewardModel
from rto.trainers import checkpoints, data_order, guards, metrics, optim, signals
from rto.trainers.experience import Experience, dump_rollout, gather_experience
from rto.trainers.ppo_models import Scorers, load_models

log = logging.getLogger(__name__)

# Hook called after each rollout with (iteration, prompt texts, response texts); returns extra metrics.
RolloutHook = Callable[[int, list[str], list[str]], dict[str, float]]


class Observer(Protocol):
    """What an iteration tells an observer (`rto bench`): its phases, timed with ``phase(name)``
    ("generation", "score" with "score.policy", "score.ref", "score.dpo", "score.critic", "score.rm"
    inside, "targets", "train"), and the scored batch."""

    def phase(self, name: str) -> contextlib.AbstractContextManager: ...

    def scored(self, rollout: Rollout, exp: Experience, targets: Targets) -> None: ...


class _Unobserved:
    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def scored(self, rollout, exp, targets) -> None:
        pass


# ----------------------------------------------------------------------------- scoring


def delimiter_table(tokenizer, delimiters: str) -> torch.Tensor:
    """(V,) bool: the token's decoded text, trailing spaces removed, ends with a delimiter character."""
    table = torch.zeros(len(tokenizer), dtype=torch.bool)
    if not delimiters:
        return table
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]).rstrip(" ")
        table[i] = bool(text) and text[-1] in delimiters
    return table


def score_rollout(
    s: Scorers, roll: Rollout, prompts: list, sample_index: torch.Tensor, observer: Observer | None = None
) -> Experience:
    """Phase 2: every scoring pass over the rollout (each timed under its own phase name), without
    gradients (torch.inference_mode; torch.no_grad under sharded weights: distributed.gradient_free)."""
    with distributed.gradient_free(s.policy.model):
        return _score_rollout(s, roll, prompts, sample_index, observer or _Unobserved())


def _score_rollout(
    s: Scorers, roll: Rollout, prompts: list, sample_index: torch.Tensor, observer
) -> Experience:
    ids, attn, P = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1]
    with observer.phase("score.policy"):
        logps = s.policy.logps(ids, attn, P)
    with observer.phase("score.ref"):
        ref_logps = s.reference.logps(ids, attn, P)
    dpo_logps = values = None
    if s.dpo is not None:
        with observer.phase("score.dpo"):
            dpo_logps = s.dpo.logps(ids, attn, P)
    if s.critic is not None:
        with observer.phase("score.critic"):
            values = s.critic.values(ids, attn, P)
    if s.reward is None:
        scores = torch.zeros(ids.shape[0], device=ids.device)
    else:
        with observer.phase("score.rm"):
            scores = s.reward.scores(ids, attn, prompts, roll)
    return Experience(
        input_ids=ids, attention_mask=attn, prompt_len=P, mask=roll.response_mask, ended=roll.ended,
        logps=logps, ref_logps=ref_logps, dpo_logps=dpo_logps, values=values, scores=scores,
        sample_index=sample_index.to(ids.device),
        engine_logps=None if roll.engine_logps is None else roll.engine_logps.to(ids.device),
    )  # fmt: skip


# ----------------------------------------------------------------------------- rewards and advantages


@dataclass
class Targets:
    rewards: Any  # TokenRewards
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    norm_scores: torch.Tensor


def kl_estimator(cfg: PPOConfig) -> str:
    """The per-token KL estimator: as configured, else k1 in the reward and k3 in the loss."""
    return cfg.kl_estimator or ("k1" if cfg.kl_placement == "reward" else "k3")


def group_index(cfg: PPOConfig, sample_index: torch.Tensor) -> torch.Tensor:
    """The prompt (group) of each sample: the samples of a prompt have consecutive global indices."""
    return sample_index // cfg.num_samples_per_prompt


def group_samples(share: list[tuple[int, int]], items: list, k: int) -> tuple[list, torch.Tensor]:
    """This process's prompts, each repeated ``k`` times (a group), and every sample's global index.

    ``share`` holds (position in the global prompt batch, item index). Sample j of the prompt at position
    p has global index p * k + j: its sampling seed derives from it, so the k samples of a prompt differ
    and no sample depends on how many processes generated the batch (k = 1: the index is p).
    """
    local_items = [items[i] for _, i in share for _ in range(k)]
    sample_index = torch.tensor([p * k + j for p, _ in share for j in range(k)], dtype=torch.long)
    return local_items, sample_index


def compute_targets(
    cfg: PPOConfig, reward: RewardModel | None, exp: Experience, kl_coef: float, delim: torch.Tensor
) -> Targets:
    """Phases 3 and 4: per-token rewards, then advantages and returns (``reward``: its score statistics
    normalise the scores; None in dpo-only)."""
    mask = exp.mask.bool()
    kl = kl_penalty(exp.logps, exp.ref_logps, kl_estimator(cfg)) * mask
    scores = exp.scores
    if cfg.normalize_rm_score and reward is not None:
        scores = (scores - reward.mean) / reward.std
    scores = scores.clamp(-cfg.rm_score_clamp, cfg.rm_score_clamp)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~exp.ended).float()
    response_ids = exp.input_ids[:, exp.prompt_len :]
    logratio = None if exp.dpo_logps is None else (exp.dpo_logps - exp.ref_logps) * mask
    rewards = compose_token_rewards(
        cfg.reward_mode,
        mask,
        kl,
        rm_scores=scores if reward is not None else None,
        dpo_logratio=logratio,
        beta1=cfg.beta1,
        beta2=kl_coef if cfg.kl_placement == "reward" else 0.0,  # else a term of the policy loss
        beta3=cfg.beta3,
        dpo_reward_clip=cfg.dpo_reward_clip,
        sentence_end_mask=delim.to(response_ids.device)[response_ids] & mask
        if cfg.reward_mode == "semi-rto"
        else None,
    )
    token_rewards = rewards.total
    if cfg.whiten_rewards:
        token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
    # The experience is the gathered global batch on every process, so these statistics are global and
    # every group is whole.
    adv, returns = estimate_advantages(
        cfg.advantage,
        token_rewards,
        mask,
        values=exp.values,
        group_index=group_index(cfg, exp.sample_index),
        level=cfg.baseline_level,
        gamma=cfg.gamma,
        lam=cfg.lam,
    )
    return Targets(rewards=rewards, advantages=adv, returns=returns, kl=kl, norm_scores=scores)


def engine_correction(cfg: PPOConfig, exp: Experience) -> tuple[torch.Tensor | None, dict[str, float]]:
    """For an engine that returned its own log-probs: the engine-trainer mismatch on the sampled tokens
    (always logged) and, with rollout_correction tis, the truncated importance weights the update applies
    to the advantages (docs/vllm.md). (None, {}) for an engine without log-probs (hf)."""
    if exp.engine_logps is None:
        return None, {}
    stats = logprob_mismatch(exp.logps, exp.engine_logps, exp.mask)
    if cfg.rollout_correction != "tis":
        return None, stats
    w = truncated_is_weights(exp.logps, exp.engine_logps, exp.mask, cfg.tis_cap)
    valid = exp.mask.bool()
    stats["tis_weight_mean"] = float(w[valid].mean()) if valid.any() else 1.0
    stats["tis_capped_frac"] = float((w[valid] >= cfg.tis_cap).float().mean()) if valid.any() else 0.0
    return w, stats


# ----------------------------------------------------------------------------- the trainer


@dataclass
class PPORun:
    """Everything an iteration needs, built by `setup_ppo`."""

    cfg: PPOConfig
    acc: Any  # accelerate.Accelerator
    out: Path
    tokenizer: Any
    prompts: list[dict]  # tokenized prompts (tokenize_prompt items)
    policy: Any  # trained models, as prepared by accelerate
    critic: Any | None
    actor_opt: Any
    critic_opt: Any | None
    actor_sched: Any
    critic_sched: Any | None
    scorers: Scorers
    engine: RolloutEngine
    kl_ctl: Any  # AdaptiveKLController | FixedKLController
    guard: guards.SkipGuard
    delimiters: torch.Tensor  # (V,) bool, semi-rto only
    start: int = 0  # first iteration (after a resume)

    @property
    def rollouts_path(self) -> Path:
        return self.out / "rollouts.jsonl"

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores beside models, optimizers and RNG."""
        return {"kl_controller": self.kl_ctl.state_dict()}


def setup_ppo(cfg: PPOConfig) -> PPORun:
    """Check the config, load models and prompts, build optimizers, the engine and the KL controller, and
    restore the newest checkpoint with --resume."""
    cfg.validate()
    check_config_sources(cfg)
    acc = distributed.make_accelerator(cfg)
    cfg.validate(num_processes=acc.num_processes)
    distributed.require_support(acc, "ppo", with_critic=ESTIMATORS[cfg.advantage].needs_critic)
    if cfg.engine == "vllm" and distributed.layout_of(acc).shards_weights:
        raise RtoError(
            f"--engine vllm does not run under {distributed.layout_of(acc).name} yet: each process's engine "
            "needs the whole policy after every update; use DDP (docs/vllm.md)"
        )
    out = checkpoints.prepare_output_dir(acc, cfg)
    if acc.is_main_process:
        for warning in cfg.warnings():
            log.warning(warning)
    metrics.init_trackers(acc, cfg, "rto-ppo")
    ms = load_models(cfg)
    tok = ms.tokenizer
    prompts = load_prompts(cfg, acc, tok)

    samples = cfg.rollout_batch_size * cfg.num_samples_per_prompt  # responses per iteration
    steps_per_iteration = cfg.ppo_epochs * (samples // cfg.mini_batch_size)
    total_steps = cfg.num_iterations * steps_per_iteration
    # The actor's schedule runs over the actor's own updates: none during the critic's warm-up.
    actor_steps = max(cfg.num_iterations - cfg.critic_warmup_iterations, 1) * steps_per_iteration
    actor_opt = optim.make_optimizer(ms.policy.parameters(), cfg.actor_lr, cfg)
    actor_sched = optim.make_scheduler(actor_opt, cfg, actor_steps)
    if cfg.gradient_checkpointing:
        ms.policy.gradient_checkpointing_enable()
    critic = critic_opt = critic_sched = None
    if ms.critic is not None:
        critic_opt = optim.make_optimizer(ms.critic.parameters(), cfg.critic_lr, cfg)
        critic_sched = optim.make_scheduler(critic_opt, cfg, total_steps)
        policy, critic, actor_opt, critic_opt = distributed.prepare_trained(
            acc, ms.policy, ms.critic, actor_opt, critic_opt, schedulers=[actor_sched, critic_sched]
        )
    else:
        policy, actor_opt = distributed.prepare_trained(acc, ms.policy, actor_opt, schedulers=[actor_sched])
    for role in ms.scorers.frozen_roles():
        role.model = distributed.prepare_frozen(acc, role.model, offload=cfg.offload_frozen_models)
    settings = SamplingSettings(
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id
    )
    kl_ctl = (
        AdaptiveKLController(cfg.beta2, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.beta2)
    )
    engine = make_engine(cfg.engine, lambda: policy, settings, **cfg.engine_options())
    run = PPORun(
        cfg=cfg, acc=acc, out=out, tokenizer=tok, prompts=prompts, policy=policy, critic=critic,
        actor_opt=actor_opt, critic_opt=critic_opt, actor_sched=actor_sched, critic_sched=critic_sched,
        scorers=ms.scorers, engine=engine, kl_ctl=kl_ctl,
        guard=guards.SkipGuard(cfg),  # on_nonfinite: stop, or skip with a limit on skips in a row
        delimiters=delimiter_table(tok, cfg.delimiters())
        if cfg.reward_mode == "semi-rto"
        else torch.zeros(0, dtype=torch.bool),
    )  # fmt: skip
    if cfg.resume:
        state = checkpoints.load_latest_checkpoint(acc, cfg.output_dir)
        if state is not None:
            run.start = state["step"]
            kl_ctl.load_state_dict(state["kl_controller"])
    if acc.is_main_process and not cfg.resume and run.rollouts_path.exists():
        run.rollouts_path.unlink()
    if acc.is_main_process and cfg.resume:
        jsonl.truncate_jsonl(run.rollouts_path, "iteration", run.start)  # later iterations are redone
    return run


def load_prompts(cfg: PPOConfig, acc, tok) -> list[dict]:
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
    return items


def ppo_iteration(
    run: PPORun,
    it: int,
    indices: list[int],
    rollout_hook: RolloutHook | None = None,
    observer: Observer | None = None,
) -> dict[str, Any] | None:
    """One iteration on the global prompt batch ``indices``; returns its metrics row, or None when a
    non-finite quantity made it skip the update (on_nonfinite=skip)."""
    cfg, acc, tok = run.cfg, run.acc, run.tokenizer
    observer = observer or _Unobserved()
    t0 = time.perf_counter()
    # 1. rollout ------------------------------------------------------------------------------------
    with observer.phase("generation"):
        share = data_order.process_share(list(enumerate(indices)), acc)
        local_items, sample_index = group_samples(share, run.prompts, cfg.num_samples_per_prompt)
        batch = collate_prompts(local_items, tok.pad_token_id)
        run.engine.sync_weights(run.policy)  # sample from the weights of the last update
        roll = run.engine.generate(
            batch["input_ids"], batch["attention_mask"], sample_seeds(cfg.seed, it, sample_index)
        )
    t1 = time.perf_counter()
    signals.pause_point("rollout", it + 1)
    # 2. score --------------------------------------------------------------------------------------
    run.policy.eval()  # scoring in eval mode, whatever the engine did with the policy
    with observer.phase("score"):
        exp = score_rollout(run.scorers, roll, [x["prompt"] for x in local_items], sample_index, observer)
        exp = gather_experience(acc, exp, tok.pad_token_id)
    t2 = time.perf_counter()
    # 3-4. rewards and advantages -------------------------------------------------------------------
    with observer.phase("targets"):
        tg = compute_targets(cfg, run.scorers.reward, exp, run.kl_ctl.value, run.delimiters)
        valid = exp.mask.bool()
        bad = guards.first_nonfinite(
            {
                "reward-model scores": exp.scores,
                "policy log-probs": exp.logps[valid],
                "reference log-probs": exp.ref_logps[valid],
                "DPO log-probs": None if exp.dpo_logps is None else exp.dpo_logps[valid],
                "critic values": None if exp.values is None else exp.values[valid],
                "engine log-probs": None if exp.engine_logps is None else exp.engine_logps[valid],
                "token rewards": tg.rewards.total,
                "advantages": tg.advantages,
                "returns": tg.returns,
            }
        )
    observer.scored(roll, exp, tg)
    if bad is not None:  # stop, or skip this iteration's update (on_nonfinite)
        run.guard.skip(NonFiniteError(f"non-finite {bad} at iteration {it + 1}"))
        return None
    hook_metrics = {}
    if rollout_hook is not None:
        prompts_text = tok.batch_decode(exp.input_ids[:, : exp.prompt_len], skip_special_tokens=True)
        responses_text = tok.batch_decode(exp.input_ids[:, exp.prompt_len :], skip_special_tokens=True)
        hook_metrics = rollout_hook(it, prompts_text, responses_text)
    if cfg.dump_rollouts and it % cfg.dump_rollouts == 0 and acc.is_main_process:
        dump_rollout(run.rollouts_path, it, tok, exp, tg)
    # 5. update -------------------------------------------------------------------------------------
    with observer.phase("train"):
        is_weights, engine_stats = engine_correction(cfg, exp)
        tg_update = (
            tg if is_weights is None else dataclasses.replace(tg, advantages=tg.advantages * is_weights)
        )
        upd = ppo_update(run, exp, tg_update, it)
    t3 = time.perf_counter()
    # metrics ---------------------------------------------------------------------------------------
    mask = exp.mask.bool()
    seq_kl = (tg.kl * mask).sum(-1)
    run.kl_ctl.update(float(seq_kl.mean()), cfg.rollout_batch_size * cfg.num_samples_per_prompt)
    row = {
        "iteration": it + 1,
        "score": float(exp.scores.mean()),
        "score_normalized": float(tg.norm_scores.mean()),
        "dpo_reward": float(tg.rewards.dpo.sum(-1).mean()),
        "kl": float(seq_kl.mean()),
        "kl_k3": float((kl_penalty(exp.logps, exp.ref_logps, "k3") * mask).sum(-1).mean()),
        "kl_coef": run.kl_ctl.value,
        "token_reward_total": float(tg.rewards.total.sum(-1).mean()),
        "response_length": float(mask.sum(-1).float().mean()),
        "eos_rate": float(exp.ended.float().mean()),
        "advantages_mean": float(masked_mean(tg.advantages, mask)),
        "returns_mean": float(masked_mean(tg.returns, mask)),
        "lr_actor": run.actor_sched.get_last_lr()[0],
        "time_generate_s": t1 - t0,
        "time_score_s": t2 - t1,
        "time_train_s": t3 - t2,
        "tokens_per_s": int(mask.sum()) / max(t3 - t0, 1e-9),
        **engine_stats,
        **upd,
        **hook_metrics,
    }
    if exp.values is not None:
        row["explained_variance"] = explained_variance(exp.values, tg.returns, mask)
        row["values_mean"] = float(masked_mean(exp.values, mask))
        row["lr_critic"] = run.critic_sched.get_last_lr()[0]
    return row


@signals.restores_signal_handlers
def train_ppo(cfg: PPOConfig | PPORun, rollout_hook: RolloutHook | None = None) -> Path:
    """Train from a config (or from a run `setup_ppo` built); returns the output folder (policy there,
    critic in ./critic)."""
    run = cfg if isinstance(cfg, PPORun) else setup_ppo(cfg)
    cfg, acc = run.cfg, run.acc
    metrics_log = metrics.MetricsLog(acc, run.out, resume_step=run.start if cfg.resume else None)
    bar = metrics.progress_bar(
        acc, cfg, cfg.num_iterations, f"rto ppo ({cfg.reward_mode})", initial=run.start
    )
    prompt_batches = data_order.global_batches(len(run.prompts), cfg.rollout_batch_size, cfg.seed, run.start)
    stop = signals.GracefulStop().install()  # SIGTERM/Ctrl-C: checkpoint at the next iteration boundary
    for it, indices in prompt_batches:
        if it >= cfg.num_iterations:
            break
        checkpoints.stop_if_requested(acc, stop, run.out, it, run.state(), cfg.save_total_limit)
        row = ppo_iteration(run, it, indices, rollout_hook)
        bar.update(1)
        if row is None:  # skipped (non-finite)
            continue
        step_no = it + 1
        if step_no % cfg.logging_steps == 0 or step_no == cfg.num_iterations:
            metrics_log.log(step_no, row)
        bar.set_postfix(score=f"{row['score']:.3f}", kl=f"{row['kl']:.3f}")
        if cfg.save_steps and step_no % cfg.save_steps == 0 and step_no < cfg.num_iterations:
            checkpoints.save_checkpoint(acc, run.out, step_no, run.state(), cfg.save_total_limit)
    bar.close()
    run.engine.close()
    checkpoints.save_hf_folder(acc, run.policy, run.tokenizer, run.out)
    if run.critic is not None:
        checkpoints.save_hf_folder(acc, run.critic, run.tokenizer, run.out / "critic")
    distributed.finish(acc)
    return run.out


# Update statistics that are means over tokens: reported as means over every token of every process.
TOKEN_MEAN_STATS = frozenset({"entropy", "clipfrac", "approx_kl", "ratio_mean", "vf_clipfrac", "kl_loss"})


def ppo_update(run: PPORun, exp: Experience, tg: Targets, it: int) -> dict[str, float]:
    """Phase 5: ppo_epochs passes over global mini-batches; each process takes its contiguous share of each.
    The actor is trained from iteration ``critic_warmup_iterations`` on (the critic from the start).

    Each loss is a sum over this process's micro-batches divided by the count of the whole global
    mini-batch (``loss_aggregation``; every process holds the whole rollout, so it knows that count), so the
    update does not depend on the number of processes or the micro-batch size. With ``kl_placement`` "loss"
    the policy loss carries the KL term, weighted by the KL controller's coefficient."""
    cfg, acc, policy, critic, guard = run.cfg, run.acc, run.policy, run.critic, run.guard
    actor_opt, critic_opt = run.actor_opt, run.critic_opt
    actor_sched, critic_sched = run.actor_sched, run.critic_sched
    train_actor = it >= cfg.critic_warmup_iterations
    excluded = run.scorers.policy.excluded_ids  # score as the rollout was scored: as it was sampled
    N = exp.input_ids.shape[0]
    mb = cfg.mini_batch_size
    n_proc = acc.num_processes
    local_mb = mb // n_proc
    micro = cfg.per_device_micro_batch_size or local_mb
    P = exp.prompt_len
    aggregation = cfg.loss_aggregation or ESTIMATORS[cfg.advantage].loss_aggregation
    kl_in_loss = cfg.kl_placement == "loss"
    sums: dict[str, float] = {}  # the mini-batch's losses (x processes) and other per-update values
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
            # the count of the whole global mini-batch: what every process's loss sums are divided by
            count = max(float(aggregation_count(exp.mask[rows], aggregation)), 1.0)
            rows = rows[acc.process_index * local_mb : (acc.process_index + 1) * local_mb]
            chunks = [rows[i : i + micro] for i in range(0, len(rows), micro)]
            for k, r in enumerate(chunks):
                r = r.to(exp.input_ids.device)
                ids, attn, mask = exp.input_ids[r], exp.attention_mask[r], exp.mask[r].bool()
                sync = k == len(chunks) - 1
                stats: dict[str, float] = {}
                if train_actor:
                    with distributed.accumulation_step(acc, policy, last=sync):
                        logits = models.causal_lm_logits(policy, ids, attn)
                        logps = shifted_token_logprobs(logits, ids, cfg.temperature, excluded)[:, P - 1 :]
                        pl, pstats = policy_loss_sum(
                            logps, exp.logps[r], tg.advantages[r], mask, cfg.clip_eps, aggregation,
                            norm_length=cfg.max_new_tokens, ref_logprobs=exp.ref_logps[r] if kl_in_loss else None,
                            kl_coef=run.kl_ctl.value, kl_estimator=kl_estimator(cfg),
                        )  # fmt: skip
                        pl_value = float(pl.total.detach()) / count * n_proc
                        if not math.isfinite(pl_value) and cfg.on_nonfinite == "stop":  # skip: see grads
                            raise guards.nonfinite_error(cfg, f"non-finite policy loss at iteration {it + 1}")
                        acc.backward(pl.total / count * n_proc)  # DDP averages over processes
                    with torch.no_grad():
                        ent = masked_mean(
                            entropy_from_logits(logits[:, P - 1 : -1].detach(), cfg.temperature, excluded),
                            mask,
                        )
                    stats.update(
                        policy_loss=pl_value,
                        entropy=float(ent),
                        **{k2: float(v) for k2, v in pstats.items()},
                    )
                if critic is not None:
                    with distributed.accumulation_step(acc, critic, last=sync):
                        values = scoring.response_values(critic, ids, attn, P)
                        vl, vstats = value_loss_sum(
                            values, exp.values[r], tg.returns[r], mask, cfg.value_clip, aggregation,
                            norm_length=cfg.max_new_tokens,
                        )  # fmt: skip
                        vl_value = float(vl.total.detach()) / count * n_proc
                        if not math.isfinite(vl_value) and cfg.on_nonfinite == "stop":  # skip: see grads
                            raise guards.nonfinite_error(cfg, f"non-finite value loss at iteration {it + 1}")
                        acc.backward(vl.total / count * n_proc)
                    stats.update(value_loss=vl_value, **{k2: float(v) for k2, v in vstats.items()})
                n_tok = float(mask.sum())
                n_tokens += n_tok
                for k2, v in stats.items():
                    if k2 in TOKEN_MEAN_STATS:
                        tok_sums[k2] = tok_sums.get(k2, 0.0) + v * n_tok
                    else:  # a loss: this micro-batch's part of the mini-batch's, x processes
                        sums[k2] = sums.get(k2, 0.0) + v
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


__all__ = [
    "PPORun",
    "ppo_iteration",
    "setup_ppo",
    "train_ppo",
    "compute_targets",
    "score_rollout",
    "load_models",
]
