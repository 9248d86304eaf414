"""The models that score a sampled response, one object per role, each with the one method its role needs.

- `LogProbModel` (policy, reference, DPO model): ``logps(ids, attn, prompt_len)``, the log-probs of the
  response tokens (B, R). A separate model, or an adapter of a shared peft model (``"__base__"``: the
  shared base with adapters off), chosen by its constructor (`reference_model`, `dpo_model`).
- `Critic`: ``values(ids, attn, prompt_len)``, the value of every response position (B, R).
- `RewardModel`: ``scores(ids, attn, prompts, rollout)``, the score of each whole (prompt, response) at its
  last token (B,). Its constructor decides how: a model on the policy's tokens; the critic's shared base
  with adapters off; or, for a reward model with its own tokenizer, the prompt re-rendered and the response
  text re-tokenized for it (`score_texts`, also what `rto eval` and the demo use).

Every scoring call runs without gradients (``torch.inference_mode``; ``torch.no_grad`` when the model's
weights are sharded, see `rto.distributed.gradient_free`): scores are data for the update, never part of its
graph. Logits are divided by the sampling temperature, and the tokens the sampler never draws (the pad token,
``excluded_ids``) are left out of the normalisation, so that log-probs are of the distribution the sampler
drew from.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

from rto import models
from rto.distributed import gradient_free

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter": the shared base model


def without_grad(fn):
    """A scoring call (a role's method, or a function of a model) without gradients."""

    @functools.wraps(fn)
    def wrapper(owner, *args, **kwargs):
        model = owner if isinstance(owner, torch.nn.Module) else owner.model
        with gradient_free(model):
            return fn(owner, *args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- token log-probs


def response_logps(
    model,
    ids,
    attn,
    prompt_len: int,
    temperature: float = 1.0,
    adapter: str | None = None,
    excluded_ids: tuple[int, ...] = (),
):
    """Log-probs of the response tokens (B, R): logits at position t score token t+1."""
    logps = models.response_token_logps(
        model, ids, attn, temperature, adapter=adapter, excluded_ids=excluded_ids
    )
    return logps[:, prompt_len - 1 :]


class LogProbModel:
    """A causal LM scoring response tokens: the policy, the reference or the DPO model.

    ``adapter`` selects an adapter of a shared peft model without changing its active adapter (``BASE``:
    adapters off); None scores with the model as it is. ``excluded_ids``: the tokens the sampler never
    draws (`rto.engines.never_sampled`), left out of the normalisation as the sampler leaves them out."""

    def __init__(
        self, model, temperature: float = 1.0, adapter: str | None = None, excluded_ids: tuple[int, ...] = ()
    ):
        self.model = model
        self.temperature = temperature
        self.adapter = adapter
        self.excluded_ids = tuple(excluded_ids)

    @property
    def own_model(self):
        """The model this role holds by itself (None when it is an adapter of a model another role owns)."""
        return None if self.adapter else self.model

    @without_grad
    def logps(self, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return response_logps(
            self.model, ids, attn, prompt_len, self.temperature, self.adapter, self.excluded_ids
        )


def load_frozen_lm(path: str, tokenizer, trust_remote_code: bool = False, dtype=None):
    """A causal LM for scoring only: eval mode, no gradients, no dropout."""
    model = models.freeze(models.load_causal_lm(path, tokenizer, trust_remote_code, dtype))
    models.disable_dropout(model)
    return model


def reference_model(
    policy,
    tokenizer,
    temperature: float,
    path: str | None,
    shared_base: bool,
    trust_remote_code: bool = False,
    dtype=None,
    excluded_ids: tuple[int, ...] = (),
) -> LogProbModel:
    """The reference policy: with a LoRA policy and no separate reference, the policy's own base with
    adapters off (no second copy of the weights); otherwise a frozen model loaded from ``path``."""
    if shared_base:
        return LogProbModel(policy, temperature, adapter=BASE, excluded_ids=excluded_ids)
    model = models.freeze(models.load_causal_lm(path, tokenizer, trust_remote_code, dtype))
    return LogProbModel(model, temperature, excluded_ids=excluded_ids)


def dpo_model(
    policy,
    tokenizer,
    temperature: float,
    path: str,
    lora: bool,
    trust_remote_code: bool = False,
    dtype=None,
    excluded_ids: tuple[int, ...] = (),
) -> LogProbModel:
    """The DPO model: a DPO run trained with --lora (its folder holds `adapter/`) becomes a second, frozen
    adapter on the LoRA policy's shared base; otherwise a frozen model loaded from ``path``."""
    models.require_same_vocabulary(
        tokenizer, models.load_tokenizer(path, trust_remote_code), "policy", "DPO model"
    )
    adapter = models.adapter_folder(path) if lora else None
    if adapter is not None:
        policy.load_adapter(str(adapter), adapter_name="dpo", is_trainable=False)
        log.info("DPO model loaded as a frozen adapter on the shared base: %s", adapter)
        return LogProbModel(policy, temperature, adapter="dpo", excluded_ids=excluded_ids)
    model = models.freeze(models.load_causal_lm(path, tokenizer, trust_remote_code, dtype))
    return LogProbModel(model, temperature, excluded_ids=excluded_ids)


# ----------------------------------------------------------------------------- values


def response_values(model, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The value head at every position that predicts a response token: (B, R), R = ids width - prompt_len."""
    return models.token_scores(model, ids, attn)[:, prompt_len - 1 : ids.shape[1] - 1]


class Critic:
    """The value model of GAE: a sequence-classification model whose head is read at every position."""

    def __init__(self, model):
        self.model = model

    @without_grad
    def values(self, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return response_values(self.model, ids, attn, prompt_len)


# ----------------------------------------------------------------------------- reward-model scores


@without_grad
def score_texts(
    model,
    tokenizer,
    prompts: Sequence,
    responses: Sequence[str],
    ended: Sequence[bool] | None = None,
    device=None,
    batch_size: int = 0,
) -> torch.Tensor:
    """Reward-model scores (B,) of (prompt, response) texts in the reward model's own tokenization: the
    prompt rendered by its tokenizer (its chat template, if any), the response re-tokenized, ending with
    its EOS unless ``ended`` says the response was cut off before one. ``batch_size`` 0: one batch."""
    from rto.data.collate import pad_sequences
    from rto.data.tokenize import encode_completion, encode_prompt

    ended = [True] * len(responses) if ended is None else list(ended)
    seqs = []
    for prompt, text, done in zip(prompts, responses, ended):
        completion = encode_completion(tokenizer, text)
        if not done and completion and completion[-1] == tokenizer.eos_token_id:
            completion = completion[:-1]  # a truncated response did not end: do not pretend it did
        seqs.append(encode_prompt(tokenizer, prompt) + completion)
    step = batch_size or max(len(seqs), 1)
    out = []
    for s in range(0, len(seqs), step):
        chunk = seqs[s : s + step]
        ids = pad_sequences(chunk, tokenizer.pad_token_id, side="right")
        attn = pad_sequences([[1] * len(x) for x in chunk], 0, side="right")
        if device is not None:
            ids, attn = ids.to(device), attn.to(device)
        out.append(models.sequence_scores(model, ids, attn))
    return torch.cat(out) if out else torch.zeros(0)


class RewardModel:
    """A Bradley-Terry reward model: one score per (prompt, response), read at its last token.

    ``kind`` says how the score is computed: "model" (a model on the policy's tokens), "critic-base" (the
    critic's shared LoRA base with adapters off) or "own-tokenizer" (re-rendered and re-tokenized for a
    model with its own tokenizer; ``tokenizer`` is the reward model's, ``policy_tokenizer`` decodes the
    responses). ``mean`` and ``std`` are the score statistics `rto rm` stored (0 and 1 when not used)."""

    def __init__(
        self,
        model,
        kind: str = "model",
        mean: float = 0.0,
        std: float = 1.0,
        tokenizer=None,
        policy_tokenizer=None,
    ):
        if kind not in ("model", "critic-base", "own-tokenizer"):
            raise ValueError(f"unknown reward-model kind {kind!r}")
        self.model, self.kind, self.mean, self.std = model, kind, mean, std
        self.tokenizer, self.policy_tokenizer = tokenizer, policy_tokenizer

    @classmethod
    def load(
        cls, path: str, policy_tokenizer, trust_remote_code: bool = False, normalize: bool = False, dtype=None
    ):
        """Load a frozen reward model; re-tokenize for it when its tokenizer differs from the policy's.
        ``normalize``: read the stored score statistics (an error when the folder has none)."""
        rtok = models.load_tokenizer(path, trust_remote_code, padding_side="right")
        same = models.same_vocabulary(policy_tokenizer, rtok)
        model = models.freeze(models.load_score_model(path, rtok, trust_remote_code, dtype))
        mean, std = models.score_stats(model, path) if normalize else (0.0, 1.0)
        if same:
            return cls(model, "model", mean, std, tokenizer=rtok)
        log.info("reward model has its own tokenizer: responses are re-tokenized for it")
        return cls(model, "own-tokenizer", mean, std, tokenizer=rtok, policy_tokenizer=policy_tokenizer)

    @property
    def own_model(self):
        """The model this role holds by itself (None when it is the critic's base)."""
        return None if self.kind == "critic-base" else self.model

    @without_grad
    def scores(self, ids: torch.Tensor, attn: torch.Tensor, prompts: Sequence, rollout) -> torch.Tensor:
        """Raw scores (B,) of the rollout's rows (``ids``/``attn``: its prompt + response tokens;
        ``prompts``: the prompts as given, used only when re-tokenizing)."""
        if self.kind == "model":
            return models.sequence_scores(self.model, ids, attn)
        if self.kind == "critic-base":
            with self.model.disable_adapter():
                return models.sequence_scores(self.model, ids, attn)
        texts = self.policy_tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        return score_texts(
            self.model, self.tokenizer, prompts, texts, rollout.ended.tolist(), device=ids.device
        )

    def text_scores(self, prompts: Sequence, responses: Sequence[str], batch_size: int = 0) -> torch.Tensor:
        """Scores of whole (prompt, response) texts, each response taken as ended (labelled pairs)."""
        return score_texts(self.model, self.tokenizer, prompts, responses, batch_size=batch_size)


__all__ = [
    "BASE",
    "Critic",
    "LogProbModel",
    "RewardModel",
    "dpo_model",
    "load_frozen_lm",
    "reference_model",
    "response_logps",
    "response_values",
    "score_texts",
]
