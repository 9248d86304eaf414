"""Loading the models a stage needs, per-token scores from sequence-classification heads, and
tokenizer compatibility checks.

Every model here is a stock Hugging Face class: policies are ``AutoModelForCausalLM``; reward models and
critics are ``AutoModelForSequenceClassification`` with one label. A critic's per-token values are that
head applied to every hidden state, so the critic initialised from the reward model starts from the
reward model's own value head, and both save as ordinary HF folders.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from rto.data.tokenize import ensure_pad_token
from rto.errors import RtoError

log = logging.getLogger(__name__)

# Keys under which `rto rm` stores its score statistics in the reward model's config.json.
SCORE_MEAN_KEY = "rto_score_mean"
SCORE_STD_KEY = "rto_score_std"


def _check_source(name: str, path: str) -> None:
    """A local folder, or a Hub id that can be loaded: otherwise "not found" now (rto.hub)."""
    from rto.hub import check_model_source

    check_model_source(name, path)


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """Tokenizer with a pad token distinct from EOS (a pad equal to EOS breaks masks and EOS checks)."""
    _check_source("tokenizer", path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise RtoError(f"could not load a tokenizer from '{path}': {e}") from e
    if tok.eos_token_id is None:
        raise RtoError(f"tokenizer of '{path}' has no EOS token; set tokenizer.eos_token and save it first")
    before = tok.pad_token
    ensure_pad_token(tok)  # embeddings are resized to the tokenizer when a model is loaded
    if tok.pad_token != before:
        log.warning("tokenizer of %s had no pad token distinct from EOS; using %r", path, tok.pad_token)
    tok.padding_side = padding_side
    return tok


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _require_safetensors(name: str, path: str) -> None:
    """Weights are read from safetensors only: unpickling a file from a user path can run arbitrary code.
    A local folder with only pickle weights is refused with a message that says so."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise RtoError(
            f"{name} '{path}' holds only pickle weights ({', '.join(pickles)}), and rto loads weights from "
            "safetensors only (unpickling can run arbitrary code). If you trust the file, convert it once: "
            "load it with transformers and save_pretrained(folder) writes model.safetensors"
        )


def _from_pretrained(name: str, kind: str, load, path: str, **kwargs) -> PreTrainedModel:
    """`load(path, use_safetensors=True, ...)` with load failures reported as RtoError naming the folder."""
    _check_source(name, path)
    _require_safetensors(name, path)
    try:
        return load(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as e:
        raise RtoError(f"could not load a {kind} from '{path}': {e}") from e
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise RtoError(f"{name} '{path}': damaged safetensors file ({e})") from e


def _fit_embeddings(model: PreTrainedModel, tokenizer) -> None:
    if tokenizer is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _dtype(dtype: str | torch.dtype | None):
    """A config's dtype name (see DTYPES; "auto": the checkpoint's own) as from_pretrained takes it."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RtoError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return DTYPES[dtype]


def load_causal_lm(
    path: str, tokenizer=None, trust_remote_code: bool = False, dtype: str | torch.dtype | None = None
) -> PreTrainedModel:
    """A causal LM in `dtype` (default float32)."""
    model = _from_pretrained(
        "model",
        "causal LM",
        AutoModelForCausalLM.from_pretrained,
        path,
        trust_remote_code=trust_remote_code,
        dtype=_dtype(dtype),
    )
    _fit_embeddings(model, tokenizer)
    return model


def load_score_model(
    path: str,
    tokenizer=None,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    fresh_head: bool = False,
) -> PreTrainedModel:
    """A one-label sequence-classification model (reward model or critic).

    Its folder must hold a trained score head: a causal-LM folder (an SFT model) would get a random one,
    and a reward model with random scores trains nothing. With ``fresh_head`` (a reward model about to
    be trained, a critic started from a policy) a missing head starts fresh, as expected, without
    transformers' missing-weights report."""
    with quiet_transformers_logs():
        model, info = _from_pretrained(
            "reward model",
            "sequence-classification model",
            AutoModelForSequenceClassification.from_pretrained,
            path,
            num_labels=1,
            trust_remote_code=trust_remote_code,
            dtype=_dtype(dtype),
            output_loading_info=True,
        )
    head = score_head(model)  # fail early if the architecture has no recognisable head
    head_names = {n for n, m in model.named_modules() if m is head}
    missing = sorted(k for k in info.get("missing_keys", ()) if k.rsplit(".", 1)[0] in head_names)
    if missing and not fresh_head:
        raise RtoError(
            f"'{path}' has no trained score head ({', '.join(missing)} not in its weights): it is not a reward "
            "model; train one from it with `rto rm --model ...`"
        )
    if missing:
        log.info("%s: the score head starts fresh (%s)", path, ", ".join(missing))
    _fit_embeddings(model, tokenizer)
    return model


@contextlib.contextmanager
def quiet_transformers_logs():
    """transformers' own log limited to errors inside the block (its load reports, progress bars)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def is_score_model(path: str, trust_remote_code: bool = False) -> bool:
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))


def score_head(model: PreTrainedModel) -> torch.nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise RtoError(f"{type(model).__name__} has no 'score' head; use a *ForSequenceClassification model")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_lm_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
    """Logits with positions that skip left padding. Extra keywords go to the forward (peft's
    `adapter_names` picks an adapter per row, "__base__" for the frozen base)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kw,
    )
    return out.logits


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The one-label head applied at every position: (B, T). Values for a critic; the reward is the
    entry at the last non-pad token.

    The model's own forward is called (it applies the head at every position, then pools) and a hook
    on the head keeps the per-position output. Going through the forward of whatever wraps the model
    (DDP, FSDP, DeepSpeed, peft) is what makes its gradient synchronisation and sharding work; reaching
    into the unwrapped backbone would silently skip them."""
    from accelerate.utils import extract_model_from_parallel

    head = score_head(extract_model_from_parallel(model))
    kept = []
    handle = head.register_forward_hook(lambda _m, _inp, out: kept.append(out))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    finally:
        handle.remove()
    if len(kept) != 1 or kept[0].shape[:2] != input_ids.shape:
        raise RtoError(
            f"{type(extract_model_from_parallel(model)).__name__}: its score head is not applied at every "
            "position, so per-token values cannot be read from it; use a causal-LM *ForSequenceClassification"
        )
    return kept[0].squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score read at the last non-pad token of each row: (B,)."""
    scores = token_scores(model, input_ids, attention_mask)
    idx = last_token_index(attention_mask)
    return scores.gather(1, idx[:, None]).squeeze(1)


def score_stats(model: PreTrainedModel, path: str = "reward model") -> tuple[float, float]:
    mean = getattr(model.config, SCORE_MEAN_KEY, None)
    std = getattr(model.config, SCORE_STD_KEY, None)
    if mean is None or std is None:
        raise RtoError(
            f"{path} has no score normalisation stats ({SCORE_MEAN_KEY}/{SCORE_STD_KEY} in config.json); "
            "train it with `rto rm`, add them by hand, or pass --no-normalize-rm-score"
        )
    return float(mean), max(float(std), 1e-6)


def same_vocabulary(tok_a, tok_b) -> bool:
    """True when both tokenizers map every token string to the same id."""
    if len(tok_a) != len(tok_b):
        return False
    return tok_a.get_vocab() == tok_b.get_vocab()


def require_same_vocabulary(tok_a, tok_b, name_a: str, name_b: str) -> None:
    if not same_vocabulary(tok_a, tok_b):
        raise RtoError(
            f"{name_b} uses a different tokenizer than {name_a} (vocab sizes {len(tok_b)} vs {len(tok_a)}"
            + ("" if len(tok_a) != len(tok_b) else ", same size but different token ids")
            + "); token log-ratios need the same tokens: train the DPO model from the same SFT model"
        )


def _is_noise_rate(name: str, value) -> bool:
    """A dropout-like probability by Hugging Face naming: attention_dropout, hidden_dropout_prob,
    resid_pdrop, layerdrop, drop_path_rate, router_jitter_noise, ... (a number, not a flag)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    name = name.lower()
    return (
        "dropout" in name
        or name.endswith(("pdrop", "layerdrop", "_drop"))
        or "drop_path" in name
        or "jitter" in name
    )


def _zero_config_noise(config, seen: set[int]) -> None:
    """Zero the dropout fields of a model config and of its sub-configs (text_config, ...)."""
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_noise(value, seen)
        elif _is_noise_rate(name, value) and value:
            setattr(config, name, 0.0)


def disable_dropout(model: torch.nn.Module) -> None:
    """Switch off every source of training-mode noise, so that the same sequence gets the same scores
    in train and eval mode (RL ratios start at exactly 1, DPO at exactly log 2).

    ``nn.Dropout`` modules are only part of it: most architectures (Llama, Qwen2, Mistral, Gemma, OPT, ...)
    copy dropout probabilities from their config into plain float attributes at construction
    (``self.attention_dropout = config.attention_dropout``) and apply them functionally in train mode;
    a few read the config at every forward. Both are zeroed: every ``nn.Dropout``, every dropout-like
    float attribute of every module, and the dropout fields of the model's config, which a saved model
    then carries (it was trained without dropout)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if isinstance(value, PretrainedConfig):
                _zero_config_noise(value, seen)
            elif _is_noise_rate(name, value) and value:
                setattr(module, name, 0.0)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def adapter_folder(path: str | None) -> Path | None:
    """The peft adapter saved with a model folder (`<path>/adapter` as `rto` writes it, or `<path>`
    itself when it is a bare adapter), or None."""
    if not path:
        return None
    for candidate in (Path(path) / "adapter", Path(path)):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def lora_wrap(model: PreTrainedModel, cfg, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """Wrap with peft LoRA adapters (import only when asked for)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise RtoError(
            "--lora needs the peft package: pip install peft (in a clone of rto: pip install -e '.[lora]')"
        ) from e
    targets = cfg.lora_target_modules
    target_modules = (
        targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, lcfg)


def unsharded_peft_copy(model, state_dict: dict):
    """A plain in-memory copy of a peft model (same base class and config, same adapters) holding the
    weights of `state_dict`: the full weights gathered from a model whose own parameters are only this
    process's shards (ZeRO-3, FSDP), so that the copy's adapter can be merged and saved."""
    import copy

    from peft import get_peft_model

    base = model.get_base_model()
    configs = {name: copy.deepcopy(c) for name, c in model.peft_config.items()}
    first, *others = configs
    floating = [v.dtype for v in state_dict.values() if v.is_floating_point()]
    fresh = type(base)(base.config)
    if floating:
        fresh.to(floating[0])
    plain = get_peft_model(fresh, configs[first], adapter_name=first)
    for name in others:
        plain.add_adapter(name, configs[name])
    # The gathered weights may leave out the second name of tied weights (FSDP2): those may be missing.
    tied: set[str] = set()
    seen: set[int] = set()
    for name, p in plain.named_parameters(remove_duplicate=False):
        tied.update([name] if id(p) in seen else [])
        seen.add(id(p))
    result = plain.load_state_dict(state_dict, strict=False)
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RtoError(
            f"gathered weights do not fit {type(base).__name__}: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(result.unexpected_keys)[:3]}"
        )
    plain.set_adapter(model.active_adapter)
    return plain


def response_token_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    adapter: str | None = None,
    excluded_ids: tuple[int, ...] = (),
):
    """log p(token t+1 | tokens <= t) for every position: (B, T-1). Logits are divided by the sampling
    temperature, and renormalised without ``excluded_ids`` (the tokens the sampler never draws), so that
    policy, reference and DPO scores are of the distribution the sampler drew from. With a peft model,
    `adapter` scores with that adapter ("__base__": adapters off) without changing its state."""
    from rto.algorithms.logprobs import shifted_token_logprobs

    kw = {} if adapter is None else {"adapter_names": [adapter] * input_ids.shape[0]}
    logits = causal_lm_logits(model, input_ids, attention_mask, **kw)
    return shifted_token_logprobs(logits, input_ids, temperature=temperature, excluded_ids=excluded_ids)
