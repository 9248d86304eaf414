"""Pad tokenized examples into batches.

Attention masks are built from the sequence LENGTHS, never by comparing ids with the pad id,
so a pad id that also occurs in real text (or equals EOS in a user's tokenizer) cannot corrupt
them. Training batches are right-padded; generation prompts are left-padded so every prompt
ends at the same position and new tokens are appended after it.
"""

from __future__ import annotations

import torch


def pad_sequences(seqs: list[list[int]], pad_value: int, side: str = "right") -> torch.LongTensor:
    """(B, T) LongTensor of `seqs` padded with `pad_value` on `side` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("cannot pad an empty batch")
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
    return out


def _ones(seqs: list[list[int]]) -> list[list[int]]:
    return [[1] * len(s) for s in seqs]


def collate_sft(batch: list[dict], pad_id: int) -> dict:
    """{input_ids, attention_mask, completion_mask}, each (B, T), right-padded."""
    ids = [b["input_ids"] for b in batch]
    return {
        "input_ids": pad_sequences(ids, pad_id),
        "attention_mask": pad_sequences(_ones(ids), 0),
        "completion_mask": pad_sequences([b["completion_mask"] for b in batch], 0),
    }


def collate_preference(batch: list[dict], pad_id: int) -> dict:
    """{input_ids, attention_mask, completion_mask}, each (2B, T): rows [0, B) chosen, [B, 2B) rejected.

    Chosen and rejected share one padded width so both go through the model in one forward pass.
    """
    ids = [b["chosen_input_ids"] for b in batch] + [b["rejected_input_ids"] for b in batch]
    masks = [b["chosen_completion_mask"] for b in batch] + [b["rejected_completion_mask"] for b in batch]
    return {
        "input_ids": pad_sequences(ids, pad_id),
        "attention_mask": pad_sequences(_ones(ids), 0),
        "completion_mask": pad_sequences(masks, 0),
    }


def collate_prompts(batch: list[dict], pad_id: int) -> dict:
    """{input_ids, attention_mask}, each (B, T), LEFT-padded for generation.

    If the items carry "prompt" / "meta" (as `tokenize_prompt` returns), they are passed through
    as lists, for reward functions that need the original prompt.
    """
    ids = [b["input_ids"] for b in batch]
    out = {
        "input_ids": pad_sequences(ids, pad_id, side="left"),
        "attention_mask": pad_sequences(_ones(ids), 0, side="left"),
    }
    for key in ("prompt", "meta"):
        if all(key in b for b in batch):
            out[key] = [b[key] for b in batch]
    return out
