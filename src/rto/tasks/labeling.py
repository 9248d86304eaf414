"""Preference labels from a gold reward, and sampling the responses to label.

Labels follow the Bradley-Terry model the reward model and DPO assume: P(a > b) = sigmoid((g_a - g_b) / tau).
The temperature tau sets the label noise. The default 0.1 suits the default gold reward (range [-1, 1]):
pairs of opposite sentiment (gap ~1) are labelled almost surely right, pairs of the same sentiment
(gap ~0.1-0.3) are right 73-95% of the time, and near-ties are coin flips -- informative but noisy, like
human labels. The labels are the only thing the reward model and DPO learn from: the training rows hold
prompt/chosen/rejected and nothing else; the gold values come back separately, for analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from rto.errors import RtoError

DEFAULT_TAU = 0.1


def preference_probability(gold_a: float, gold_b: float, tau: float = DEFAULT_TAU) -> float:
    """P(a preferred over b) = sigmoid((gold_a - gold_b) / tau), computed without overflow."""
    z = (gold_a - gold_b) / tau
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def bradley_terry_labels(
    gold_a: Sequence[float],
    gold_b: Sequence[float],
    tau: float = DEFAULT_TAU,
    generator: torch.Generator | np.random.Generator | None = None,
) -> list[bool]:
    """For each pair, True when a is preferred, drawn with P(a > b) = sigmoid((g_a - g_b) / tau).
    ``generator`` (torch or numpy) makes the draw reproducible; one uniform is used per pair, in order."""
    if len(gold_a) != len(gold_b):
        raise RtoError(f"labelling: {len(gold_a)} gold scores for a but {len(gold_b)} for b")
    if not tau > 0:
        raise RtoError(f"labelling: tau must be > 0, got {tau}")
    n = len(gold_a)
    if isinstance(generator, torch.Generator):
        u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
    else:
        rng = generator if generator is not None else np.random.default_rng()
        u = rng.random(n).tolist()
    return [ui < preference_probability(a, b, tau) for ui, a, b in zip(u, gold_a, gold_b)]


class PreferenceData(NamedTuple):
    rows: list[dict[str, str]]  # {"prompt", "chosen", "rejected"}: all the RM and DPO may see
    gold: list[dict[str, float]]  # parallel to rows: {"chosen_gold", "rejected_gold", "p_chosen"}
    n_identical: int  # pairs skipped because both responses were the same text


def make_preference_rows(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    gold_a: Sequence[float],
    gold_b: Sequence[float],
    tau: float = DEFAULT_TAU,
    seed: int = 0,
) -> PreferenceData:
    """Label each pair by Bradley-Terry sampling and return training rows without any gold value.

    Pairs with identical responses carry no preference and are skipped (counted in ``n_identical``).
    Labels are drawn for every pair before skipping, so a pair's label depends only on its index and
    the seed. ``gold[i]["p_chosen"]`` is the probability with which row i's chosen side was preferred."""
    n = len(prompts)
    for name, seq in (
        ("responses_a", responses_a),
        ("responses_b", responses_b),
        ("gold_a", gold_a),
        ("gold_b", gold_b),
    ):
        if len(seq) != n:
            raise RtoError(f"labelling: {n} prompts but {len(seq)} {name}")
    labels = bradley_terry_labels(gold_a, gold_b, tau, np.random.default_rng(seed))
    rows, gold, n_identical = [], [], 0
    for prompt, ra, rb, ga, gb, a_wins in zip(prompts, responses_a, responses_b, gold_a, gold_b, labels):
        if ra == rb:
            n_identical += 1
            continue
        (chosen, rejected, gc, gr) = (ra, rb, ga, gb) if a_wins else (rb, ra, gb, ga)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        gold.append(
            {
                "chosen_gold": float(gc),
                "rejected_gold": float(gr),
                "p_chosen": preference_probability(gc, gr, tau),
            }
        )
    return PreferenceData(rows, gold, n_identical)


def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    n_per_prompt: int = 2,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    engine: str = "hf",
    engine_options: dict | None = None,
) -> list[list[str]]:
    """``n_per_prompt`` sampled responses for each prompt: out[i][j] is the j-th response to prompts[i].

    Sampled by the rollout ``engine`` (``rto.engines``) exactly as PPO and `rto eval` sample: prompts are
    tokenized as every prompt is (``encode_prompt``: rendered, the tokenizer's BOS once) and response j of
    prompt i draws from its own seed (``seed``, index ``i * n_per_prompt + j``), so the responses do not
    depend on ``batch_size`` and the global torch RNG is never touched. Responses are decoded without the
    prompt and with special tokens removed (the EOS included), leading space kept so that prompt + response
    is the full text. ``temperature == 0`` means greedy decoding. The model's train/eval mode is restored."""
    from rto.data.tokenize import encode_prompt
    from rto.engines import SamplingSettings, generate_for_prompts, make_engine, sample_seeds

    if n_per_prompt < 1 or batch_size < 1 or max_new_tokens < 1:
        raise RtoError("sampling: n_per_prompt, batch_size and max_new_tokens must be >= 1")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    flat = [ids for ids in encoded for _ in range(n_per_prompt)]
    seeds = sample_seeds(seed, 0, torch.arange(len(flat)))
    settings = SamplingSettings(
        max_new_tokens, temperature, top_p, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    was_training = model.training
    sampler = make_engine(engine, model, settings, **(engine_options or {}))
    texts: list[str] = []
    try:
        for start in range(0, len(flat), batch_size):
            roll = generate_for_prompts(
                sampler, flat[start : start + batch_size], seeds[start : start + batch_size]
            )
            texts.extend(tokenizer.batch_decode(roll.response_ids, skip_special_tokens=True))
    finally:
        sampler.close()
        model.train(was_training)
    return [texts[i * n_per_prompt : (i + 1) * n_per_prompt] for i in range(len(prompts))]
