"""`rto label`: preference data for any prompts, policy and gold reward.

For each prompt the policy samples ``num_samples_per_prompt`` responses (an even number); consecutive
responses form a pair, both are scored by the gold reward, and the pair is labelled by Bradley-Terry sampling,
P(a preferred) = sigmoid((g_a - g_b) / tau) (``rto.tasks.labeling``). Pairs with two identical responses
carry no preference and are skipped.

The output file holds only ``prompt``/``chosen``/``rejected``: what `rto rm` and `rto dpo` may learn
from. The gold values go to a sidecar file beside it (``<out>.gold.jsonl``: one line per row, in the
same order, with ``chosen_gold``, ``rejected_gold`` and ``p_chosen``, the probability with which the
chosen side was preferred), for analysis only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from rto.config import GenerationOptions, VLLMOptions, check_positive, missing_required, raise_problems
from rto.tasks.labeling import DEFAULT_TAU, PreferenceData, make_preference_rows, sample_responses


@dataclass
class LabelConfig(GenerationOptions, VLLMOptions):
    """Sample response pairs from a policy and label them with a gold reward (Bradley-Terry)."""

    required: ClassVar[tuple[str, ...]] = ("prompts", "policy", "out")

    prompts: str = ""
    """Prompts: a file or dataset in any format rto ppo reads (prompt or messages column; chat templates applied)."""
    policy: str = ""
    """Folder (or hub id) of the policy that samples the responses (usually the SFT model)."""
    gold_reward: str = "vader"
    """Gold reward: 'vader', 'module:function' or 'path/to/file.py:function' taking (prompts, responses)."""
    out: str = ""
    """Output .jsonl with prompt/chosen/rejected; the gold values go to <out stem>.gold.jsonl."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy decoding)."""
    num_samples_per_prompt: int = 2
    """Responses per prompt, an even number: consecutive responses form a labelled pair (2: one pair per prompt)."""
    tau: float = DEFAULT_TAU
    """Bradley-Terry temperature: P(a > b) = sigmoid((gold_a - gold_b) / tau); smaller = less label noise."""
    max_prompts: int = 0
    """Use only the first this many prompts (0: all)."""
    seed: int = 0
    """Seed of the sampling and of the label draws."""
    batch_size: int = 128
    """Sequences per generation batch."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""

    def validate(self) -> None:
        """Raise a ConfigError listing every problem (missing fields first)."""
        problems = missing_required(self, self.required)
        self.check_generation(problems, greedy_allowed=True)
        self.check_vllm(problems)
        if self.num_samples_per_prompt % 2:
            problems.append(
                f"field 'num_samples_per_prompt' must be even (responses are paired), got {self.num_samples_per_prompt}"
            )
        check_positive(self, problems, "tau", "batch_size")
        check_positive(self, problems, "max_prompts", "threads", allow_zero=True)
        raise_problems(problems)


def gold_sidecar_path(out: str | Path) -> Path:
    """'prefs.jsonl' -> 'prefs.gold.jsonl' (beside it)."""
    out = Path(out)
    return out.with_name(
        out.name[: -len(out.suffix)] + ".gold.jsonl" if out.suffix else out.name + ".gold.jsonl"
    )


def label_pairs(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    gold_fn: Callable[[list[str], list[str]], list[float]],
    *,
    pairs_per_prompt: int = 1,
    tau: float = DEFAULT_TAU,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 128,
    engine: str = "hf",
    engine_options: dict | None = None,
) -> tuple[PreferenceData, dict[str, float]]:
    """Sample 2 * pairs_per_prompt responses per prompt, score them with the gold reward and label the
    pairs by Bradley-Terry sampling. Returns the data (rows hold prompt/chosen/rejected only) and its
    ``label_stats``.

    Pairs where a response is empty (the policy emitted EOS at once) are dropped after labelling and
    counted: preference data with an empty completion is refused by the data layer."""
    samples = sample_responses(
        model, tokenizer, list(prompts), n_per_prompt=2 * pairs_per_prompt, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, engine=engine,
        engine_options=engine_options,
    )  # fmt: skip
    pair_prompts, a, b = [], [], []
    for p, rs in zip(prompts, samples):
        for j in range(pairs_per_prompt):
            pair_prompts.append(p)
            a.append(rs[2 * j])
            b.append(rs[2 * j + 1])
    from rto.eval import prompt_text

    texts = [prompt_text(p) for p in pair_prompts]
    gold = gold_fn(texts + texts, a + b)
    n = len(a)
    data = make_preference_rows(pair_prompts, a, b, gold[:n], gold[n:], tau=tau, seed=seed)
    keep = [i for i, r in enumerate(data.rows) if r["chosen"].strip() and r["rejected"].strip()]
    n_empty = len(data.rows) - len(keep)
    data = data._replace(rows=[data.rows[i] for i in keep], gold=[data.gold[i] for i in keep])
    return data, label_stats(data, n_empty)


def write_preferences(out: str | Path, data: PreferenceData) -> tuple[Path, Path]:
    """Rows to ``out`` and gold values to the sidecar; returns both paths. A conversational prompt (a
    message list) gets its responses as assistant turns, TRL's conversational preference format."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in data.rows:
            chat = isinstance(row["prompt"], list)
            chosen, rejected = (
                ([{"role": "assistant", "content": row[k]}] if chat else row[k])
                for k in ("chosen", "rejected")
            )
            f.write(json.dumps({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}) + "\n")
    side = gold_sidecar_path(out)
    with side.open("w") as f:
        for i, g in enumerate(data.gold):
            f.write(json.dumps({"row": i, **g}) + "\n")
    return out, side


def label_stats(data: PreferenceData, n_empty: int = 0) -> dict[str, float]:
    """How informative the labels are: share of pairs whose chosen side has the higher gold value, the
    mean |gold gap|, and the mean gold of chosen and rejected responses."""
    if not data.gold:
        return {"pairs": 0, "identical_skipped": data.n_identical, "empty_skipped": n_empty}
    gc = np.array([g["chosen_gold"] for g in data.gold])
    gr = np.array([g["rejected_gold"] for g in data.gold])
    return {
        "pairs": len(data.rows),
        "identical_skipped": data.n_identical,
        "empty_skipped": n_empty,
        "agreement_with_gold": float(((gc > gr) + 0.5 * (gc == gr)).mean()),
        "mean_abs_gold_gap": float(np.abs(gc - gr).mean()),
        "chosen_gold_mean": float(gc.mean()),
        "rejected_gold_mean": float(gr.mean()),
    }


def run_label(cfg: LabelConfig) -> Path:
    """`rto label`: writes the preference rows and the gold sidecar; prints label statistics."""
    import torch

    from rto import models
    from rto.eval import load_prompt_texts
    from rto.tasks.gold import load_gold_reward

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    gold_fn = load_gold_reward(cfg.gold_reward)
    prompts = load_prompt_texts(cfg.prompts, cfg.max_prompts)
    tok = models.load_tokenizer(cfg.policy, padding_side="left")
    model = models.freeze(models.load_causal_lm(cfg.policy, tok))
    data, s = label_pairs(
        model, tok, prompts, gold_fn, pairs_per_prompt=cfg.num_samples_per_prompt // 2, tau=cfg.tau, seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        batch_size=cfg.batch_size, engine=cfg.engine, engine_options=cfg.engine_options(),
    )  # fmt: skip
    out, side = write_preferences(cfg.out, data)
    print(
        f"{s['pairs']} pairs from {len(prompts)} prompts ({s['identical_skipped']} identical and "
        f"{s['empty_skipped']} with an empty response skipped) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    if s["pairs"]:
        print(
            f"chosen has the higher gold in {s['agreement_with_gold']:.1%} of pairs (tau {cfg.tau}); "
            f"mean |gold gap| {s['mean_abs_gold_gap']:.3f}"
        )
    print(f"wrote {out} (prompt/chosen/rejected) and {side} (gold values)")
    return out


__all__ = ["LabelConfig", "run_label", "label_pairs", "write_preferences", "label_stats", "gold_sidecar_path"]
