"""One dataclass per stage, a docstring per field.

Configs are read from an optional YAML file (``--config run.yaml``) and then overridden by command-line
flags; ``tyro`` does the command-line part (flags are the field names with dashes: ``--reward-mode``).
Field docstrings are the ``--help`` text. The resolved config is written next to the outputs.
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
from typing import Any, Literal

import yaml

from rto.errors import ConfigError


@dataclass
class RunConfig:
    """Fields every stage shares: where outputs go, seeding, logging, checkpoints."""

    output_dir: str = ""
    """Folder for the trained model, metrics.jsonl, config.yaml and checkpoints (required)."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Experiment tracker used through accelerate (metrics.jsonl is always written)."""
    logging_steps: int = 1
    """Log metrics every this many optimizer steps (PPO: iterations)."""
    save_steps: int = 0
    """Write a resumable checkpoint every this many optimizer steps (PPO: iterations); 0 = only at the end."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest are deleted after a new one is complete)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir/checkpoints."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code (off unless you ask for it)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Mixed precision through accelerate (GPU runs; keep "no" on CPU)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Precision the models' weights are loaded in: float32, bfloat16 or float16 (half the memory; trained
    weights then also update in that precision), or auto (the precision stored with each model)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the trained models (GPU runs)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """What to do when a loss, reward, advantage or gradient is NaN/inf: stop, or skip that update."""
    max_consecutive_skips: int = 20
    """With on_nonfinite=skip: stop when this many updates in a row were skipped (a run that only skips
    trains nothing); 0 never stops."""
    deterministic: bool = False
    """Use deterministic GPU kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG):
    bitwise-repeatable GPU runs, somewhat slower (CPU runs are deterministic anyway)."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class DataColumns:
    """Column names of the input data (TRL's names by default); change them to read other layouts."""

    text_column: str = "text"
    """Column with whole texts (SFT, plain language modelling)."""
    prompt_column: str = "prompt"
    """Column with prompts (string or list of chat messages)."""
    completion_column: str = "completion"
    """Column with completions (SFT prompt/completion format)."""
    messages_column: str = "messages"
    """Column with whole conversations (list of {role, content})."""
    chosen_column: str = "chosen"
    """Column with the preferred response (preference data)."""
    rejected_column: str = "rejected"
    """Column with the dispreferred response (preference data)."""


@dataclass
class LoraOptions:
    """LoRA adapters through peft."""

    lora: bool = False
    """Train LoRA adapters instead of the full model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names to adapt, or "all-linear"."""


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


@dataclass
class TrainStageConfig(RunConfig, DataColumns, LoraOptions, OptimOptions):
    """Shared by the supervised stages (sft, rm, dpo)."""

    model: str = ""
    """Hugging Face hub id or local folder of the starting model (required)."""
    data: str = ""
    """Local .json/.jsonl/.parquet/.csv file, a saved datasets folder, or a hub dataset name (required)."""
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


@dataclass
class SFTConfig(TrainStageConfig):
    """Supervised fine-tuning: next-token loss on completion tokens only."""

    learning_rate: float = 2e-5
    """Peak learning rate."""


@dataclass
class PreferenceOptions:
    """Preference data (reward model and DPO)."""

    identical_pairs: Literal["error", "drop"] = "error"
    """A row whose chosen equals its rejected expresses no preference: an error naming the row, or drop
    such rows (their number is logged)."""


@dataclass
class RewardConfig(TrainStageConfig, PreferenceOptions):
    """Bradley-Terry reward model on a one-label sequence-classification head."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    center_rewards_coefficient: float = 0.0
    """Optional penalty coef * mean over pairs of (r_chosen + r_rejected)^2, as TRL: keeps scores centred
    on zero without shrinking the chosen-rejected margin (0 disables)."""
    disable_dropout: bool = True
    """Turn dropout off: scores are then the same in training and in use."""


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
    """IPO on per-token averaged log-ratios (the IPO authors' experiments, TRL) instead of summed ones (the
    IPO paper's equation; default: beta then means what it means for DPO, and the model's per-token
    log-ratios, RTO's token reward, are on the same scale as the other losses')."""


@dataclass
class PPOConfig(RunConfig, DataColumns, LoraOptions):
    """PPO with token-wise rewards (RTO and the paper's variants)."""

    # --- models ---
    policy: str = ""
    """Starting policy (the SFT model): hub id or folder (required)."""
    ref_model: str | None = None
    """Reference policy for the KL penalty and the DPO log-ratio; default: the policy."""
    reward_model: str | None = None
    """Bradley-Terry reward model folder (required unless reward_mode is dpo-only)."""
    dpo_model: str | None = None
    """DPO model whose log-ratio to the reference is the dense token reward (required for rto-like modes)."""
    critic: str | None = None
    """Critic initialisation; default: the reward model (backbone and value head)."""
    # --- data ---
    prompts: str = ""
    """Prompt data: file or hub dataset with a prompt (or messages) column (required)."""
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
    """How per-token rewards are built (SPEC section 2)."""
    beta1: float = 0.05
    """Weight of the DPO token reward log pi_dpo - log pi_ref."""
    beta2: float = 0.01
    """Per-token KL penalty coefficient (initial value when adaptive_kl is on)."""
    beta3: float = 1.0
    """Weight of the normalised reward-model score at the last token."""
    dpo_reward_clip: float | None = None
    """Clamp each beta1 * log-ratio to +-this (the authors' code; off by default, not in the paper)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator used in the reward."""
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
    sentence_delimiters: str = ".!?\n"
    """Characters that end a sentence (semi-rto): a token whose decoded text ends with one is a delimiter."""
    # --- advantage ---
    advantage: Literal["gae", "reinforce++"] = "gae"
    """GAE with a critic, or REINFORCE++ (no critic; returns-to-go whitened over the global batch)."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten token rewards over the rollout batch before GAE (off, as the paper)."""
    # --- generation ---
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: hf (Hugging Face generate on the live policy) or vllm (needs the vllm package)."""
    max_new_tokens: int = 64
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature; all scoring passes divide logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    # --- optimisation ---
    num_iterations: int = 100
    """PPO iterations (rollout + update)."""
    rollout_batch_size: int = 64
    """Prompts per iteration (global, all processes together)."""
    mini_batch_size: int = 16
    """Sequences per optimizer step (global)."""
    per_device_micro_batch_size: int = 0
    """Sequences per forward/backward per process (0: mini_batch_size / processes, no accumulation)."""
    ppo_epochs: int = 1
    """Passes over each rollout."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    value_clip: float | None = 0.2
    """Value-loss clip range (None disables)."""
    vf_coef: float = 0.5
    """Kept for reporting: the value loss already carries the 0.5 factor; critic has its own optimizer."""
    actor_lr: float = 5e-7
    """Actor learning rate."""
    critic_lr: float = 9e-6
    """Critic learning rate."""
    critic_warmup_iterations: int = 0
    """Iterations at the start that train only the critic."""
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
    """Gradient-norm clip for actor and critic."""
    dump_rollouts: int = 0
    """Every N iterations append the rollout (texts, ids, log-probs, rewards, advantages) to rollouts.jsonl."""
    eval_every: int = 0
    """Every N iterations call the optional evaluation hook (used by the demo)."""


STAGE_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RewardConfig,
    "dpo": DPOConfig,
    "ppo": PPOConfig,
}


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


def load_yaml_config(cls: type, path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(values).__name__}")
    return config_from_dict(cls, values, source=str(path))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | Path) -> Path:
    """Write the resolved config as rto_config.yaml beside the outputs (the model keeps its config.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "rto_config.yaml"
    data = {"stage": type(cfg).__name__, **config_to_dict(cfg)}
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def config_hash(cfg: Any) -> str:
    import hashlib

    blob = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _require(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n):
            raise ConfigError(f"field '{n}' is required (--{n.replace('_', '-')})")


def _positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            continue
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"field '{n}' must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def _in_range(cfg: Any, name: str, low: float, high: float, high_inclusive: bool = False) -> None:
    v = getattr(cfg, name)
    if not (low <= v <= high if high_inclusive else low <= v < high):
        raise ConfigError(
            f"field '{name}' must be in [{low}, {high}{']' if high_inclusive else ')'}, got {v}"
        )


# Fields where +inf is a meaningful value ("no clamp"); NaN is never accepted.
INF_ALLOWED = frozenset({"rm_score_clamp", "dpo_reward_clip"})
# Fields naming models read by a run: the output folder must not be one of them.
INPUT_MODEL_FIELDS = ("model", "ref_model", "policy", "dpo_model", "reward_model", "critic")


def _finite_numbers(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and f.name not in INF_ALLOWED)):
            raise ConfigError(f"field '{f.name}' must be a finite number, got {v}")


def _output_not_an_input(cfg: Any) -> None:
    """Writing the run's outputs into a folder it reads a model from would overwrite that model."""
    out = Path(cfg.output_dir).expanduser().resolve()
    for name in INPUT_MODEL_FIELDS:
        path = getattr(cfg, name, None)
        if path and Path(path).expanduser().exists() and Path(path).expanduser().resolve() == out:
            raise ConfigError(
                f"field 'output_dir' is the folder of field '{name}' ({path}): the run would overwrite the "
                "model it starts from; choose another --output-dir"
            )


def validate_config(cfg: Any) -> None:
    """Check values a stage cannot run with; messages name the field."""
    _require(cfg, "output_dir")
    _finite_numbers(cfg)
    _output_not_an_input(cfg)
    _positive(cfg, "save_total_limit", "logging_steps")
    _positive(cfg, "save_steps", allow_zero=True)
    if getattr(cfg, "lora", False):
        _positive(cfg, "lora_r", "lora_alpha")
        _in_range(cfg, "lora_dropout", 0.0, 1.0)
    if hasattr(cfg, "adam_beta1"):
        _in_range(cfg, "adam_beta1", 0.0, 1.0)
        _in_range(cfg, "adam_beta2", 0.0, 1.0)
        _positive(cfg, "adam_eps", "weight_decay", allow_zero=True)
    if isinstance(cfg, TrainStageConfig):
        _require(cfg, "model", "data")
        _positive(cfg, "max_length", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate")
        _positive(cfg, "num_epochs", "max_grad_norm", "weight_decay", allow_zero=True)
        if not 0 <= cfg.warmup_ratio < 1:
            raise ConfigError(f"field 'warmup_ratio' must be in [0, 1), got {cfg.warmup_ratio}")
        if cfg.max_steps <= 0 and cfg.num_epochs <= 0:
            raise ConfigError("one of 'num_epochs' or 'max_steps' must be > 0")
    if isinstance(cfg, DPOConfig):
        _positive(cfg, "beta")
        if not 0 <= cfg.label_smoothing < 0.5:
            raise ConfigError(f"field 'label_smoothing' must be in [0, 0.5), got {cfg.label_smoothing}")
    if isinstance(cfg, PPOConfig):
        _require(cfg, "policy", "prompts")
        _positive(cfg, "beta1", "beta2", "beta3", "gamma", "lam", "value_clip", allow_zero=True)
        _positive(cfg, "max_new_tokens", "temperature", "top_p", "num_iterations", "rollout_batch_size")
        _positive(cfg, "mini_batch_size", "ppo_epochs", "clip_eps", "actor_lr", "max_prompt_length")
        _positive(cfg, "critic_lr", "per_device_micro_batch_size", "dump_rollouts", allow_zero=True)
        _positive(cfg, "dpo_reward_clip", "rm_score_clamp")
        if cfg.top_p > 1:
            raise ConfigError(f"field 'top_p' must be in (0, 1], got {cfg.top_p}")
        _in_range(cfg, "gamma", 0.0, 1.0, high_inclusive=True)
        _in_range(cfg, "lam", 0.0, 1.0, high_inclusive=True)
        _in_range(cfg, "warmup_ratio", 0.0, 1.0)
        _positive(cfg, "critic_warmup_iterations", "eval_every", "max_grad_norm", allow_zero=True)
        if cfg.adaptive_kl:
            _positive(cfg, "kl_target", "kl_horizon")
        if cfg.reward_mode == "semi-rto" and not cfg.sentence_delimiters:
            raise ConfigError(
                "reward_mode 'semi-rto' needs field 'sentence_delimiters' (--sentence-delimiters)"
            )
        if cfg.rollout_batch_size % cfg.mini_batch_size:
            raise ConfigError(
                f"field 'rollout_batch_size' ({cfg.rollout_batch_size}) must be a multiple of "
                f"'mini_batch_size' ({cfg.mini_batch_size})"
            )
        needs_dpo = cfg.reward_mode != "ppo"
        needs_rm = cfg.reward_mode != "dpo-only"
        if needs_dpo and not cfg.dpo_model:
            raise ConfigError(f"reward_mode '{cfg.reward_mode}' needs field 'dpo_model' (--dpo-model)")
        if needs_rm and not cfg.reward_model:
            raise ConfigError(f"reward_mode '{cfg.reward_mode}' needs field 'reward_model' (--reward-model)")
        if cfg.advantage == "gae" and not (cfg.critic or cfg.reward_model):
            raise ConfigError("advantage 'gae' needs a critic: give --critic or --reward-model")


__all__ = [
    "RunConfig",
    "SFTConfig",
    "RewardConfig",
    "DPOConfig",
    "PPOConfig",
    "STAGE_CONFIGS",
    "config_from_dict",
    "load_yaml_config",
    "save_config",
    "validate_config",
    "config_hash",
]
