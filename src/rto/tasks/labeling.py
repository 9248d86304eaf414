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


@torch.no_grad()
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
) -> list[list[str]]:
    """``n_per_prompt`` sampled responses for each prompt: out[i][j] is the j-th response to prompts[i].

    Prompts are tokenized as given (no BOS added, like the SFT data) and left-padded; responses are
    decoded without the prompt and with special tokens removed (the EOS included), leading space kept so
    that prompt + response is the full text. Deterministic given ``seed`` and ``batch_size``: the global
    torch RNG is left as it was. ``temperature <= 0`` means greedy decoding."""
    if n_per_prompt < 1 or batch_size < 1 or max_new_tokens < 1:
        raise RtoError("sampling: n_per_prompt, batch_size and max_new_tokens must be >= 1")
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    do_sample = temperature > 0
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    texts: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(flat), batch_size):
                enc = tokenizer(flat[start : start + batch_size], return_tensors="pt", padding=True)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out = model.generate(**enc, **gen_kwargs)
                new = out[:, enc["input_ids"].shape[1] :]
                texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return [texts[i * n_per_prompt : (i + 1) * n_per_prompt] for i in range(len(prompts))]
