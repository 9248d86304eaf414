import numpy as np
import pytest
from transformers import GPT2LMHeadModel

from rto.errors import ConfigError
from rto.tasks.gold import vader_compound
from rto.tasks.sentiment import (
    build_sentiment_tokenizer,
    generate_examples,
    generate_prompts,
    generate_reviews,
    tiny_gpt2_config,
)


def test_corpus_is_deterministic_given_seed():
    assert generate_reviews(200, seed=3) == generate_reviews(200, seed=3)
    assert generate_reviews(200, seed=3) != generate_reviews(200, seed=4)
    assert generate_prompts(100, seed=1) == generate_prompts(100, seed=1)
    assert generate_prompts(100, seed=1) != generate_prompts(100, seed=2)
    # a prefix of a longer draw: the n-th review does not depend on how many follow
    assert generate_reviews(50, seed=3) == generate_reviews(200, seed=3)[:50]


def test_examples_split_review_into_opening_and_rest():
    examples = generate_examples(300, seed=0)
    reviews = generate_reviews(300, seed=0)
    assert [e["prompt"] + e["completion"] for e in examples] == reviews
    openings = set(generate_prompts(20000, seed=0))
    for e in examples:
        assert e["completion"].startswith(" ") and not e["prompt"].endswith(" ")
        assert e["prompt"] in openings  # prompts come from the same distribution as SFT openings
        assert e["completion"].rstrip()[-1] in ".!?"


def test_prompts_leave_sentiment_open():
    prompts = sorted(set(generate_prompts(5000, seed=0)))
    assert len(prompts) > 300  # enough distinct openings for train/eval splits by seed
    assert all(c == 0.0 for c in vader_compound(prompts))


def test_corpus_sentiment_spread_and_length():
    reviews = generate_reviews(2000, seed=0)
    c = np.array(vader_compound(reviews))
    assert abs(c.mean()) < 0.1
    assert c.std() > 0.5
    assert (c > 0.5).mean() > 0.25 and (c < -0.5).mean() > 0.25
    assert 0.03 < (np.abs(c) < 0.3).mean() < 0.4  # some mild / mixed reviews too
    words = np.array([len(r.split()) for r in reviews])
    assert 12 <= words.mean() <= 30
    assert words.min() >= 5 and words.max() <= 45


def test_tokenizer_and_presets_build_models_of_the_expected_size():
    tok = build_sentiment_tokenizer(generate_reviews(2000, seed=0), vocab_size=2048)
    assert len(tok) <= 2048
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    # almost every word of the grammar is a single token
    ids = tok("The movie was great.")["input_ids"]
    assert len(ids) <= 6
    expected = {"micro": (0.1e6, 0.5e6), "tiny": (0.7e6, 2e6), "small": (2.5e6, 5e6), "medium": (10e6, 20e6)}
    for size, (lo, hi) in expected.items():
        cfg = tiny_gpt2_config(tok, size)
        assert cfg.vocab_size == len(tok) and cfg.n_positions == 128
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        if size in ("micro", "tiny"):
            n = sum(p.numel() for p in GPT2LMHeadModel(cfg).parameters())
        else:  # the analytic count of GPT-2 with tied embeddings (building the 15M model is slow-ish)
            d, L = cfg.n_embd, cfg.n_layer
            n = cfg.vocab_size * d + cfg.n_positions * d + L * (12 * d * d + 13 * d) + 2 * d
        assert lo < n < hi, (size, n)
    cfg = tiny_gpt2_config(tok, "micro")
    n = sum(p.numel() for p in GPT2LMHeadModel(cfg).parameters())
    d, L = cfg.n_embd, cfg.n_layer
    assert n == cfg.vocab_size * d + cfg.n_positions * d + L * (12 * d * d + 13 * d) + 2 * d
    with pytest.raises(ConfigError, match="huge"):
        tiny_gpt2_config(tok, "huge")
