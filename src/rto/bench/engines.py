"""`rto bench --engines hf vllm`: rollout generation by engine on the bench's shapes.

Each engine samples the bench's rollout batch (``rollout_batch_size`` prompts of ``prompt_length`` tokens,
``max_new_tokens`` new tokens, temperature 1, one seed per sample) from the same SFT policy of the bench's
world, ``warmup_iterations`` unmeasured then ``iterations`` measured times. Per engine the bench reports
the time to start the engine, the time of a weight sync (what every PPO iteration pays before sampling:
nothing for hf, which samples from the live model; a weight copy into the engine for vllm), the time of
one rollout batch, and generated tokens per second (valid response tokens / generation time). Engines
are measured one after the other in one process, so the load figures of the bench apply to both.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch


def _summary(xs: list[float], how: str) -> float:
    if how == "min":
        return min(xs)
    return statistics.median(xs) if how == "median" else statistics.fmean(xs)


def compare_engines(
    engines: list[str],
    policy_dir: Path,
    items: list[dict],
    *,
    rollout_batch_size: int,
    max_new_tokens: int,
    warmup_iterations: int,
    iterations: int,
    statistic: str,
    seed: int,
    engine_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """{engine: {start_s, sync_s, generate_s, tokens, tokens_per_s}} (see the module docstring).
    ``items`` are the bench's tokenized prompts (dicts with "input_ids"); the first rollout_batch_size
    are sampled."""
    from rto import models
    from rto.data.collate import collate_prompts
    from rto.engines import SamplingSettings, make_engine, sample_seeds

    tok = models.load_tokenizer(str(policy_dir), padding_side="left")
    policy = models.load_causal_lm(str(policy_dir), tok).eval()
    models.disable_dropout(policy)
    items = items[:rollout_batch_size]
    batch = collate_prompts(items, tok.pad_token_id)
    settings = SamplingSettings(max_new_tokens, 1.0, 1.0, tok.eos_token_id, tok.pad_token_id)
    results: dict[str, dict[str, float]] = {}
    for name in engines:
        t0 = time.perf_counter()
        engine = make_engine(name, policy, settings, **(engine_options or {}).get(name, {}))
        start_s = time.perf_counter() - t0
        syncs, gens, tokens = [], [], []
        try:
            for it in range(warmup_iterations + iterations):
                t0 = time.perf_counter()
                engine.sync_weights(policy)
                t1 = time.perf_counter()
                seeds = sample_seeds(seed, it, torch.arange(len(items)))
                roll = engine.generate(batch["input_ids"], batch["attention_mask"], seeds)
                t2 = time.perf_counter()
                if it >= warmup_iterations:
                    syncs.append(t1 - t0)
                    gens.append(t2 - t1)
                    tokens.append(int(roll.response_mask.sum()))
        finally:
            engine.close()
        gen = _summary(gens, statistic)
        results[name] = {
            "start_s": start_s,
            "sync_s": _summary(syncs, statistic),
            "generate_s": gen,
            "tokens": statistics.fmean(tokens),
            "tokens_per_s": statistics.fmean(tokens) / max(gen, 1e-9),
        }
    return results


def format_engines(res: dict[str, dict[str, float]]) -> list[str]:
    """Table lines: one row per engine, and each engine's generation speed relative to hf."""
    lines = [
        "Rollout generation by engine (same policy, prompts and seeds):",
        f"  {'engine':<8} {'start':>9} {'sync':>9} {'generate':>10} {'tokens':>8} {'tokens/s':>10}",
    ]
    for name, r in res.items():
        lines.append(
            f"  {name:<8} {r['start_s']:>8.2f}s {r['sync_s'] * 1e3:>7.1f}ms {r['generate_s']:>9.3f}s "
            f"{r['tokens']:>8.0f} {r['tokens_per_s']:>10.0f}"
        )
    if "hf" in res:
        base = res["hf"]["tokens_per_s"]
        for name, r in res.items():
            if name != "hf":
                lines.append(f"  {name} generates {r['tokens_per_s'] / base:.2f}x the tokens/s of hf")
    return lines
