"""`rto bench --engines`: generation by engine on the bench's shapes (hf here; vllm where installed)."""

import math

from rto.bench.engines import compare_engines, format_engines
from rto.data.tokenize import encode_prompt
from rto.models import load_tokenizer


def test_compare_engines_times_each_engine_on_the_same_batch(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    items = [{"input_ids": encode_prompt(tok, p)} for p in ["The movie", "What a", "The story was", "Hello"]]
    res = compare_engines(
        ["hf"], tiny_model_dir, items, rollout_batch_size=3, max_new_tokens=5, warmup_iterations=1,
        iterations=2, statistic="min", seed=0,
    )  # fmt: skip
    r = res["hf"]
    assert set(r) == {"start_s", "sync_s", "generate_s", "tokens", "tokens_per_s"}
    assert 3 <= r["tokens"] <= 3 * 5  # valid response tokens of the 3 sampled prompts
    assert r["generate_s"] > 0 and math.isclose(r["tokens_per_s"], r["tokens"] / r["generate_s"])
    lines = format_engines({"hf": r, "other": {**r, "tokens_per_s": 2 * r["tokens_per_s"]}})
    assert lines[-1] == "  other generates 2.00x the tokens/s of hf"
