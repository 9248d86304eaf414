"""One dataclass per stage, a docstring per field, and a `validate()` per config.

Configs are read from an optional YAML file (``--config run.yaml``) and then overridden by command-line
flags; ``tyro`` does the command-line part (flags are the field names with dashes: ``--reward-mode``).
Field docstrings are the ``--help`` text, one line each (tyro keeps a docstring's line breaks). The
resolved config is written beside the outputs as ``rto_config.yaml`` and is a valid ``--config`` for the
same command.

Settings shared by several commands live in one group each (a mixin dataclass): ``RunConfig`` (output
folder, seeding, checkpoints, logging), the column names, ``LoraOptions``, ``OptimOptions`` and
``GenerationOptions`` (engine, response length, temperature, top-p, samples per prompt: used by `rto
ppo`, `rto eval`, `rto label` and `rto demo`). Each config's ``validate()`` checks everything that can
be checked before a model is loaded and reports every missing required field at once.

One module on purpose (about 800 lines, most of them field docstrings): every command's settings and
their help text in one place, so that the shared groups stay shared and `rto <cmd> --help` reads from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from rto.errors import ConfigError

# ----------------------------------------------------------------------------- groups of fields


@dataclass
class RunConfig:
    """Fields every training stage shares: where outputs go, seeding, logging, checkpoints."""

    output_dir: str = ""
    """Folder for the trained model, metrics.jsonl, rto_config.yaml and checkpoints/."""
    overwrite_output_dir: bool = False
    """Train into a folder that holds the outputs of an earlier run, replacing them (its checkpoints are deleted)."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    threads: int = 0
    """torch CPU threads per process (0: torch's default, all cores). On a small or shared CPU 1 is often fastest."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Experiment tracker used through accelerate (metrics.jsonl is always written)."""
    logging_steps: int = 1
    """Log metrics every this many optimizer steps (PPO: iterations)."""
    save_steps: int = 0
    """Write a resumable checkpoint every this many optimizer steps (PPO: iterations); 0: none during training (the final model is always saved, and Ctrl-C still checkpoints)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest are deleted after a new one is complete)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir/checkpoints."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code (off unless you ask for it)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Mixed precision through accelerate (GPU runs; keep "no" on CPU)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Precision the models' weights are loaded in: float32, bfloat16 or float16 (half the memory; trained weights then also update in that precision), or auto (the precision stored with each model)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the trained models (GPU runs)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """What to do when a loss, reward, advantage or gradient is NaN/inf: stop, or skip that update."""
    max_consecutive_skips: int = 20
    """With on_nonfinite=skip: stop when this many updates in a row were skipped (0: never stop)."""
    deterministic: bool = False
    """Deterministic GPU kernels: bitwise-repeatable GPU runs, somewhat slower (CPU runs are deterministic anyway)."""
    progress: bool = True
    """Show a progress bar (only on a terminal; other libraries log warnings and errors only)."""

    def check_run(self, problems: list[str]) -> None:
        _finite_numbers(self, problems)
        _output_not_an_input(self, problems)
        check_positive(self, problems, "save_total_limit", "logging_steps")
        check_positive(self, problems, "save_steps", "threads", "max_consecutive_skips", allow_zero=True)
        if self.resume and self.overwrite_output_dir:
            problems.append(
                "fields 'resume' and 'overwrite_output_dir' exclude each other: continue the run or replace it"
            )


@dataclass
class PromptColumns:
    """Column names of prompt data (TRL's names by default)."""

    prompt_column: str = "prompt"
    """Column with prompts (a string or a list of chat messages)."""
    messages_column: str = "messages"
    """Column with whole conversations (list of {role, content}); the final assistant turn is dropped."""


@dataclass
class CompletionColumns(PromptColumns):
    """Column names of SFT data (TRL's names by default)."""

    text_column: str = "text"
    """Column with whole texts (plain language modelling)."""
    completion_column: str = "completion"
    """Column with completions (prompt/completion format)."""


@dataclass
class PreferenceColumns:
    """Column names of preference data (TRL's names by default)."""

    prompt_column: str = "prompt"
    """Column with prompts (absent: the shared start of chosen and rejected is the prompt)."""
    chosen_column: str = "chosen"
    """Column with the preferred response (a string or a list of chat messages)."""
    rejected_column: str = "rejected"
    """Column with the dispreferred response (a string or a list of chat messages)."""


@dataclass
class LoraOptions:
    """LoRA adapters through peft."""

    lora: bool = False
    """Train LoRA adapters instead of the full model (needs peft: pip install peft)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names to adapt, or "all-linear"."""

    def check_lora(self, problems: list[str]) -> None:
        if self.lora:
            check_positive(self, problems, "lora_r", "lora_alpha")
            check_range(self, problems, "lora_dropout", 0.0, 1.0)


@dataclass
class OptimOptions:
    """AdamW with a warmup + decay schedule and gradient clipping."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps spent warming up linearly from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""

    def check_optim(self, problems: list[str]) -> None:
        check_range(self, problems, "adam_beta1", 0.0, 1.0)
        check_range(self, problems, "adam_beta2", 0.0, 1.0)
        check_range(self, problems, "warmup_ratio", 0.0, 1.0)
        check_positive(self, problems, "adam_eps", "weight_decay", "max_grad_norm", allow_zero=True)


@dataclass
class GenerationOptions:
    """How responses are sampled (`rto ppo`, `rto eval`, `rto label`, `rto demo`)."""

    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: hf (Hugging Face generate on the live policy) or vllm (needs the vllm package)."""
    max_new_tokens: int = 64
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities (PPO's ratio and KL, eval's KL) use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold. In PPO, below 1 the samples come from the nucleus while every log-prob is scored under the whole distribution, so training is slightly off-policy: keep 1.0 there."""
    num_samples_per_prompt: int = 1
    """Responses sampled per prompt (rto ppo: the rollout batch still counts prompts, so an iteration has rollout_batch_size x this many responses)."""

    def check_generation(self, problems: list[str], greedy_allowed: bool = False) -> None:
        check_positive(self, problems, "max_new_tokens", "num_samples_per_prompt")
        check_positive(self, problems, "temperature", allow_zero=greedy_allowed)
        if not 0 < self.top_p <= 1:
            problems.append(f"field 'top_p' must be in (0, 1], got {self.top_p}")


@dataclass
class VLLMOptions:
    """Options of the vLLM rollout engine, used with --engine vllm (`rto ppo`, `rto eval`, `rto label`;
    docs/vllm.md)."""

    vllm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the vLLM engine's weights and compute (bfloat16 is what you want on a GPU)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU memory vLLM may take for its weights and KV cache; the trainer needs the rest (ignored on CPU)."""
    vllm_kv_cache_gib: float | None = None
    """vLLM KV cache size in GiB; default: 1 on CPU, on GPU what the memory utilization leaves."""
    vllm_sleep_level: Literal[0, 1, 2] = 0
    """GPU only: 1 or 2 puts the vLLM engine to sleep between rollouts so the trainer has its memory (1 keeps its weights in CPU memory, 2 drops them)."""
    vllm_max_model_len: int | None = None
    """Longest prompt + response the vLLM engine accepts; default: the model's context length."""
    vllm_cuda_graphs: bool = True
    """GPU only: vLLM captures decoding steps as CUDA graphs (faster decoding, slower start)."""

    def engine_options(self) -> dict:
        """Keyword options of `rto.engines.make_engine` for the configured engine."""
        if getattr(self, "engine", "hf") != "vllm":
            return {}
        return {
            "dtype": self.vllm_dtype,
            "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
            "kv_cache_gib": self.vllm_kv_cache_gib,
            "sleep_level": self.vllm_sleep_level,
            "max_model_len": self.vllm_max_model_len,
            "cuda_graphs": self.vllm_cuda_graphs,
            "seed": getattr(self, "seed", 0),
        }

    def check_vllm(self, problems: list[str]) -> None:
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            problems.append(
                f"field 'vllm_gpu_memory_utilization' must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        check_positive(self, problems, "vllm_kv_cache_gib", "vllm_max_model_len")


# ----------------------------------------------------------------------------- the stages


@dataclass
class TrainStageConfig(RunConfig, LoraOptions, OptimOptions):
    """Shared by the supervised stages (sft, rm, dpo)."""

    required: ClassVar[tuple[str, ...]] = ("model", "data", "output_dir")

    model: str = ""
    """Hugging Face hub id or local folder of the starting model."""
    data: str = ""
    """Local .json/.jsonl/.parquet/.csv file, a saved datasets folder, or a hub dataset name."""
    split: str = "train"
    """Dataset split to read."""
    data_subset: str | None = None
    """Hub dataset configuration name, if any."""
    max_length: int = 512
    """Longest prompt+completion in tokens."""
    overflow: Literal["truncate", "drop"] = "truncate"
    """What to do with longer examples: truncate them or drop them (counts are reported)."""
    per_device_batch_size: int = 8
    """Examples per process per micro-step."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step. Global batch = per_device x accumulation x processes."""
    num_epochs: float = 1.0
    """Passes over the data (fractions allowed)."""
    max_steps: int = -1
    """If > 0, stop after this many optimizer steps (overrides num_epochs)."""
    disable_dropout: bool = False
    """Turn dropout off in the trained model."""

    def validate(self) -> None:
        """Raise a ConfigError listing every problem of this config (missing fields first)."""
        raise_problems(self.problems())

    def problems(self) -> list[str]:
        problems = missing_required(self, self.required)
        self.check_run(problems)
        self.check_lora(problems)
        self.check_optim(problems)
        check_positive(self, problems, "max_length", "per_device_batch_size", "gradient_accumulation_steps")
        check_positive(self, problems, "learning_rate")
        check_positive(self, problems, "num_epochs", allow_zero=True)
        if self.max_steps <= 0 and self.num_epochs <= 0:
            problems.append("one of 'num_epochs' or 'max_steps' must be > 0")
        return problems


@dataclass
class SFTConfig(TrainStageConfig, CompletionColumns):
    """Supervised fine-tuning: next-token loss on completion tokens only."""

    learning_rate: float = 2e-5
    """Peak learning rate."""


@dataclass
class PreferenceOptions(PreferenceColumns):
    """Preference data (reward model and DPO)."""

    identical_pairs: Literal["error", "drop"] = "error"
    """A row whose chosen equals its rejected expresses no preference: an error naming the row, or drop such rows (their number is logged)."""


@dataclass
class RewardConfig(TrainStageConfig, PreferenceOptions):
    """Bradley-Terry reward model on a one-label sequence-classification head."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    center_rewards_coefficient: float = 0.0
    """Optional penalty coef * mean over pairs of (r_chosen + r_rejected)^2, as TRL: keeps scores centred on zero without shrinking the chosen-rejected margin (0 disables)."""
    disable_dropout: bool = True
    """Turn dropout off: scores are then the same in training and in use."""

    def problems(self) -> list[str]:
        problems = super().problems()
        check_positive(self, problems, "center_rewards_coefficient", allow_zero=True)
        return problems


@dataclass
class DPOConfig(TrainStageConfig, PreferenceOptions):
    """Direct Preference Optimization against a frozen reference."""

    learning_rate: float = 5e-7
    """Peak learning rate."""
    disable_dropout: bool = True
    """Turn dropout off, so that at step 0 the policy equals the reference (loss log 2)."""
    beta: float = 0.1
    """DPO temperature: strength of the implicit KL to the reference."""
    loss_type: Literal["sigmoid", "ipo", "simpo", "rdpo", "tdpo"] = "sigmoid"
    """Preference loss: sigmoid (DPO), ipo, simpo (reference-free), rdpo (length-regularised), tdpo (token-level)."""
    label_smoothing: float = 0.0
    """Conservative DPO (cDPO): assumed probability that a label is flipped (sigmoid loss only)."""
    ref_model: str | None = None
    """Reference model; default: the starting model."""
    simpo_gamma: float = 0.5
    """SimPO target reward margin."""
    rdpo_alpha: float = 0.01
    """R-DPO length-regularisation coefficient alpha: margin beta*h + alpha*(|y_chosen| - |y_rejected|)."""
    tdpo_alpha: float = 0.5
    """TDPO2 weight of the sequential-KL term."""
    ipo_per_token: bool = False
    """IPO on per-token averaged log-ratios (the IPO authors' experiments, TRL) instead of summed ones (the IPO paper's equation; default: beta then means what it means for DPO, and the model's per-token log-ratios, RTO's token reward, are on the same scale as the other losses')."""
    offload_frozen_models: bool = False
    """Under FSDP2: keep the reference's slices in CPU memory, each block copied to the device only while it runs (less device memory, a copy per use); no effect otherwise."""

    def problems(self) -> list[str]:
        problems = super().problems()
        check_positive(self, problems, "beta")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"field 'label_smoothing' must be in [0, 0.5), got {self.label_smoothing}")
        return problems


# Reward modes that use the DPO model's log-ratio (weighted by beta1), and those that use the reward model.
DPO_REWARD_MODES = ("rto", "semi-rto", "ddpo", "rs-ppo", "dpo-only")
RM_REWARD_MODES = ("ppo", "rto", "semi-rto", "ddpo", "rs-ppo")


@dataclass
class PPOConfig(RunConfig, PromptColumns, LoraOptions, GenerationOptions, VLLMOptions):
    """PPO with token-wise rewards (RTO and the paper's variants)."""

    required: ClassVar[tuple[str, ...]] = ("policy", "prompts", "output_dir")

    # --- models ---
    policy: str = ""
    """Starting policy (the SFT model): hub id or folder."""
    ref_model: str | None = None
    """Reference policy for the KL penalty and the DPO log-ratio; default: the policy."""
    reward_model: str | None = None
    """Reward model folder written by `rto rm` (required unless reward_mode is dpo-only)."""
    dpo_model: str | None = None
    """DPO model whose log-ratio to the reference is the dense token reward (required unless reward_mode is ppo)."""
    critic: str | None = None
    """Critic initialisation; default: the reward model (backbone and value head)."""
    # --- data ---
    prompts: str = ""
    """Prompt data: file, saved datasets folder or hub dataset with a prompt (or messages) column."""
    split: str = "train"
    """Dataset split to read."""
    data_subset: str | None = None
    """Hub dataset configuration name, if any."""
    max_prompt_length: int = 256
    """Prompts longer than this keep their last tokens (or are dropped, see overflow)."""
    overflow: Literal["truncate", "drop"] = "truncate"
    """Over-long prompts: truncate (keep the end) or drop."""
    # --- reward ---
    reward_mode: Literal["ppo", "rto", "semi-rto", "ddpo", "rs-ppo", "dpo-only"] = "rto"
    """How per-token rewards are built: ppo (KL + RM score at the end), rto (+ DPO log-ratio at every token), semi-rto, ddpo, rs-ppo, dpo-only (see the README)."""
    beta1: float = 0.05
    """Weight of the DPO token reward log pi_dpo - log pi_ref. Keep beta1 <= beta2 (see beta2)."""
    beta2: float = 0.05
    """Per-token KL coefficient (initial value with adaptive_kl). With beta1 > beta2 and no dpo_reward_clip RTO collapsed at every such setting of our sweep (docs/experiments.md); the paper's value is 0.01."""
    beta3: float = 1.0
    """Weight of the normalised reward-model score at the last token."""
    dpo_reward_clip: float | None = None
    """Clamp each beta1 * log-ratio to +-this (the authors' code; off by default, not in the paper)."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Per-token KL estimator (docs/estimators.md); default: k1 in the reward, k3 in the loss (GRPO's)."""
    kl_placement: Literal["reward", "loss"] = "reward"
    """Where the beta2 KL penalty goes: in every token's reward (RTO, classic PPO), or as a term of the policy loss (GRPO)."""
    adaptive_kl: bool = False
    """Adapt beta2 towards kl_target (Ziegler et al.)."""
    kl_target: float = 6.0
    """Target sequence KL for the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (samples) of the adaptive controller."""
    normalize_rm_score: bool = True
    """Normalise RM scores with the mean/std stored by `rto rm` (error if missing; disable to use raw)."""
    rm_score_clamp: float = 10.0
    """Clamp normalised RM scores to +-this."""
    missing_eos_penalty: float | None = None
    """Subtract this from the RM score of responses that never emitted EOS (None: no penalty)."""
    sentence_delimiters: str = ".!?\\n"
    """Characters that end a sentence (semi-rto); \\n and \\t stand for newline and tab."""
    # --- advantage ---
    advantage: Literal["gae", "reinforce++", "grpo", "rloo", "reinforce++-baseline", "dr-grpo"] = "gae"
    """Advantage estimator (docs/estimators.md): gae (critic), reinforce++, or a group baseline over each prompt's responses (num_samples_per_prompt >= 2): grpo, rloo, reinforce++-baseline, dr-grpo."""
    baseline_level: Literal["token", "sequence"] = "token"
    """Group estimators: the baseline per response position on returns-to-go (token: dense rewards keep their credit) or on the summed reward (sequence: as published; RTO becomes DDPO)."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten token rewards over the rollout batch before GAE (off, as the paper)."""
    # --- engine-trainer mismatch ---
    rollout_correction: Literal["tis", "none"] = "tis"
    """For an engine with its own probabilities (vllm): tis weighs each token's policy loss by min(pi_trainer / pi_engine, tis_cap) (truncated importance sampling); none does not. No effect with hf."""
    tis_cap: float = 2.0
    """Cap C of the truncated importance weights (rollout_correction tis); docs/vllm.md says why 2."""
    # --- optimisation ---
    num_iterations: int = 100
    """PPO iterations (rollout + update)."""
    rollout_batch_size: int = 64
    """Prompts per iteration (global, all processes together); each gets num_samples_per_prompt responses."""
    mini_batch_size: int = 16
    """Responses per optimizer step (global)."""
    per_device_micro_batch_size: int = 0
    """Responses per forward/backward per process (0: mini_batch_size / processes, no accumulation)."""
    offload_frozen_models: bool = False
    """Under FSDP2: keep the frozen models' slices (reference, DPO and reward models) in CPU memory, each block copied to the device only while it runs (less device memory, a copy per use); no effect otherwise."""
    ppo_epochs: int = 1
    """Passes over each rollout."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    loss_aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] | None = None
    """Per-token losses to one loss: mean over responses of token means, mean over all tokens (DAPO), or of token sums / max_new_tokens (Dr. GRPO); default: the estimator's (docs/estimators.md)."""
    value_clip: float | None = 0.2
    """Value-loss clip range (None disables)."""
    actor_lr: float = 5e-7
    """Actor learning rate."""
    critic_lr: float = 9e-6
    """Critic learning rate."""
    critic_warmup_iterations: int = 0
    """Iterations at the start that train only the critic. The actor's learning-rate schedule (warmup and decay) runs over the actor's own updates, after these."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    warmup_ratio: float = 0.03
    """Fraction of optimizer steps spent warming up."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip for actor and critic (0 disables)."""
    dump_rollouts: int = 0
    """Every N iterations append the rollout (texts, ids, log-probs, rewards, advantages) to rollouts.jsonl."""

    @property
    def needs_dpo_model(self) -> bool:
        return self.reward_mode in DPO_REWARD_MODES

    @property
    def needs_reward_model(self) -> bool:
        return self.reward_mode in RM_REWARD_MODES

    def validate(self, num_processes: int = 1) -> None:
        """Raise a ConfigError listing every problem of this config (missing fields first); with
        ``num_processes`` also the batch sizes that do not divide over the processes."""
        raise_problems(self.problems(num_processes))

    def problems(self, num_processes: int = 1) -> list[str]:
        required = list(self.required)
        if self.needs_dpo_model:
            required.append("dpo_model")
        if self.needs_reward_model:
            required.append("reward_model")
        problems = missing_required(self, required, why={
            "dpo_model": f"reward_mode '{self.reward_mode}' needs it",
            "reward_model": f"reward_mode '{self.reward_mode}' needs it",
        })  # fmt: skip
        from rto.algorithms.estimators import ESTIMATORS  # torch: only when a PPO config is checked

        estimator = ESTIMATORS[self.advantage]
        if estimator.needs_critic and not (self.critic or self.reward_model or self.needs_reward_model):
            problems.append(f"advantage '{self.advantage}' needs a critic: give --critic or --reward-model")
        self.check_run(problems)
        self.check_lora(problems)
        self.check_generation(problems)
        self.check_vllm(problems)
        check_positive(self, problems, "tis_cap")
        if estimator.needs_groups and self.num_samples_per_prompt < 2:
            problems.append(
                f"advantage '{self.advantage}' compares the responses sampled for each prompt: set field "
                "'num_samples_per_prompt' to 2 or more (--num-samples-per-prompt)"
            )
        if self.kl_placement == "loss" and self.kl_estimator == "k1":
            problems.append(
                "field 'kl_estimator' k1 cannot be a loss term (its gradient is zero in expectation under the "
                "sampling policy): use k3 (GRPO's) or k2 with kl_placement 'loss'"
            )
        check_positive(
            self, problems, "beta1", "beta2", "beta3", "gamma", "lam", "value_clip", allow_zero=True
        )
        check_positive(
            self, problems, "num_iterations", "rollout_batch_size", "mini_batch_size", "ppo_epochs"
        )
        check_positive(
            self, problems, "clip_eps", "actor_lr", "max_prompt_length", "dpo_reward_clip", "rm_score_clamp"
        )
        check_positive(
            self, problems, "critic_lr", "per_device_micro_batch_size", "dump_rollouts", allow_zero=True
        )
        check_positive(self, problems, "critic_warmup_iterations", allow_zero=True)
        check_range(self, problems, "gamma", 0.0, 1.0, high_inclusive=True)
        check_range(self, problems, "lam", 0.0, 1.0, high_inclusive=True)
        check_range(self, problems, "adam_beta1", 0.0, 1.0)
        check_range(self, problems, "adam_beta2", 0.0, 1.0)
        check_range(self, problems, "warmup_ratio", 0.0, 1.0)
        check_positive(self, problems, "adam_eps", "weight_decay", "max_grad_norm", allow_zero=True)
        if self.adaptive_kl:
            check_positive(self, problems, "kl_target", "kl_horizon")
        if self.reward_mode == "semi-rto" and not self.sentence_delimiters:
            problems.append(
                "reward_mode 'semi-rto' needs field 'sentence_delimiters' (--sentence-delimiters)"
            )
        samples = self.rollout_batch_size * self.num_samples_per_prompt  # responses per iteration
        if self.mini_batch_size > 0 and samples % self.mini_batch_size:
            k = self.num_samples_per_prompt
            per_prompt = f" x 'num_samples_per_prompt' ({k}) = {samples} responses" if k > 1 else ""
            problems.append(
                f"field 'rollout_batch_size' ({self.rollout_batch_size}){per_prompt} must be a multiple of "
                f"'mini_batch_size' ({self.mini_batch_size})"
            )
        for name in ("rollout_batch_size", "mini_batch_size"):
            if getattr(self, name) % num_processes:
                problems.append(
                    f"field '{name}' ({getattr(self, name)}) must be divisible by the number of processes "
                    f"({num_processes})"
                )
        return problems

    def warnings(self) -> list[str]:
        """Settings that run but that our own measurements advise against."""
        out = []
        if self.needs_dpo_model and self.beta1 > self.beta2 and self.dpo_reward_clip is None:
            out.append(
                f"beta1 ({self.beta1:g}) > beta2 ({self.beta2:g}) without --dpo-reward-clip: in our sweep "
                "(docs/experiments.md) every such setting collapsed (responses ran to or towards the length cap, "
                "KL in the hundreds); keep beta1 <= beta2 or clip the DPO token reward"
            )
        return out

    def delimiters(self) -> str:
        """sentence_delimiters with the escapes \\n and \\t read as newline and tab."""
        return self.sentence_delimiters.replace("\\n", "\n").replace("\\t", "\t")


STAGE_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RewardConfig,
    "dpo": DPOConfig,
    "ppo": PPOConfig,
}


# ----------------------------------------------------------------------------- reading and writing configs


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def suggest(name: str, options: list[str]) -> str:
    """' (did you mean X?)' or ''."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def config_from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build a config from a mapping; unknown fields are an error naming the field and the closest one,
    and each value is checked against the field's type (YAML reads ``1e-5`` as a string: numeric strings
    are accepted for numeric fields)."""
    names = field_names(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        norm = str(key).replace("-", "_")
        if norm not in names:
            raise ConfigError(f"{source}: unknown field '{key}' for {cls.__name__}{suggest(norm, names)}")
        kwargs[norm] = coerce_value(norm, hints[norm], value, source)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def coerce_value(name: str, tp: Any, value: Any, source: str = "config") -> Any:
    """`value` as the field's type, or a ConfigError naming the field, the expected type and the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(name, arg, value, source)
            except ConfigError:
                pass
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = suggest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{source}: field '{name}' must be {_type_name(tp)}; got {value!r}{hint}")
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(
        f"{source}: field '{name}' must be {_type_name(tp)}; got {value!r} ({type(value).__name__})"
    )


# The command that each config class belongs to, for the 'stage' key of rto_config.yaml.
COMMAND_OF_CONFIG = {
    "SFTConfig": "sft",
    "RewardConfig": "rm",
    "DPOConfig": "dpo",
    "PPOConfig": "ppo",
    "DemoConfig": "demo",
    "EvalConfig": "eval",
    "LabelConfig": "label",
    "ExperimentConfig": "experiment",
    "BenchConfig": "bench",
}
STAGE_KEY = "stage"


def _command_name(stage: Any) -> str:
    """'DPOConfig' or 'dpo' -> 'dpo' (unknown names unchanged)."""
    return COMMAND_OF_CONFIG.get(str(stage), str(stage))


def load_yaml_config(cls: type, path: str | Path) -> Any:
    """A config from a YAML mapping of field: value. The ``stage`` key that rto writes into
    rto_config.yaml is accepted when it names this config's command, and a config of another command is
    named as such."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(values).__name__}")
    if STAGE_KEY in values and STAGE_KEY not in field_names(cls):
        theirs, ours = _command_name(values.pop(STAGE_KEY)), _command_name(cls.__name__)
        if theirs != ours:
            raise ConfigError(
                f"{path}: this is a config of `rto {theirs}` (stage: {theirs}), not of `rto {ours}`; "
                f"use it with `rto {theirs} --config {path}`"
            )
    return config_from_dict(cls, values, source=str(path))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | Path) -> Path:
    """Write the resolved config as rto_config.yaml beside the outputs (the model keeps its config.json).
    The file is a valid --config for the same command (its 'stage' key names the command)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "rto_config.yaml"
    data = {STAGE_KEY: _command_name(type(cfg).__name__), **config_to_dict(cfg)}
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def config_hash(cfg: Any) -> str:
    import hashlib

    blob = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- checks used by validate()


def raise_problems(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def missing_required(cfg: Any, names: typing.Iterable[str], why: dict[str, str] | None = None) -> list[str]:
    """One problem naming every required field that is empty."""
    missing = [n for n in names if not getattr(cfg, n)]
    if not missing:
        return []
    why = why or {}
    listed = ", ".join(flag(n) + (f" ({why[n]})" if n in why else "") for n in missing)
    return [f"required field{'s' if len(missing) > 1 else ''} missing: {listed}"]


def check_positive(cfg: Any, problems: list[str], *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is None or isinstance(v, bool):
            continue
        if v < 0 or (v == 0 and not allow_zero):
            problems.append(f"field '{n}' must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def check_range(
    cfg: Any, problems: list[str], name: str, low: float, high: float, high_inclusive: bool = False
) -> None:
    v = getattr(cfg, name)
    if not (low <= v <= high if high_inclusive else low <= v < high):
        problems.append(
            f"field '{name}' must be in [{low:g}, {high:g}{']' if high_inclusive else ')'}, got {v}"
        )


# Fields where +inf is a meaningful value ("no clamp"); NaN is never accepted.
INF_ALLOWED = frozenset({"rm_score_clamp", "dpo_reward_clip"})
# Fields naming models read by a run: the output folder must not be one of them.
INPUT_MODEL_FIELDS = ("model", "ref_model", "policy", "dpo_model", "reward_model", "critic")


def _finite_numbers(cfg: Any, problems: list[str]) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and f.name not in INF_ALLOWED)):
            problems.append(f"field '{f.name}' must be a finite number, got {v}")


def _output_not_an_input(cfg: Any, problems: list[str]) -> None:
    """Writing the run's outputs into a folder it reads a model from would overwrite that model."""
    if not cfg.output_dir:
        return
    out = Path(cfg.output_dir).expanduser().resolve()
    for name in INPUT_MODEL_FIELDS:
        path = getattr(cfg, name, None)
        if path and Path(path).expanduser().exists() and Path(path).expanduser().resolve() == out:
            problems.append(
                f"field 'output_dir' is the folder of field '{name}' ({path}): the run would overwrite the "
                "model it starts from; choose another --output-dir"
            )


__all__ = [
    "RunConfig",
    "GenerationOptions",
    "SFTConfig",
    "RewardConfig",
    "DPOConfig",
    "PPOConfig",
    "STAGE_CONFIGS",
    "config_from_dict",
    "load_yaml_config",
    "save_config",
    "config_hash",
]
