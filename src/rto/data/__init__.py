"""Data layer: load rows, read TRL-style formats, tokenize with exact loss masks, collate."""

from rto.data.collate import collate_preference, collate_prompts, collate_sft, pad_sequences
from rto.data.formats import (
    ColumnMap,
    split_shared_prefix,
    to_preference_examples,
    to_prompt_examples,
    to_sft_examples,
)
from rto.data.loading import load_rows
from rto.data.tokenize import (
    encode_completion,
    encode_prompt,
    ensure_pad_token,
    render_completion,
    render_prompt,
    tokenize_all,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)

__all__ = [
    "ColumnMap",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "encode_completion",
    "encode_prompt",
    "ensure_pad_token",
    "load_rows",
    "pad_sequences",
    "render_completion",
    "render_prompt",
    "split_shared_prefix",
    "to_preference_examples",
    "to_prompt_examples",
    "to_sft_examples",
    "tokenize_all",
    "tokenize_preference",
    "tokenize_prompt",
    "tokenize_sft",
]
