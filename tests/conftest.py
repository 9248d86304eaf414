"""Shared fixtures: everything offline, tiny, built on the fly."""

from __future__ import annotations

import os

# Fail loudly instead of hanging if anything tries to reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

SAMPLE_TEXTS = [
    "The movie was great and the acting was wonderful.",
    "I hated the plot, it was boring and awful.",
    "What a lovely film! The music was beautiful.",
    "The story is fine. The ending was terrible.",
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "Questions and answers: what is the capital of France? Paris is.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A ~300-token byte-level BPE with BOS/EOS/PAD and no chat template."""
    from rto.tasks.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_chat_tokenizer():
    """The same BPE with a small chat template."""
    from rto.tasks.tokenizer import CHAT_TEMPLATE, train_bpe_tokenizer

    return train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=300, chat_template=CHAT_TEMPLATE)


def make_tiny_gpt2(tokenizer, seed: int = 0, n_embd: int = 32, n_layer: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny GPT-2 + tokenizer folder, loadable by from_pretrained."""
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model = make_tiny_gpt2(tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
