import pytest
import torch

from rto.data.collate import collate_preference, collate_prompts, collate_sft, pad_sequences

PAD = 0


def test_pad_sequences_right_and_left():
    seqs = [[5, 6, 7], [8], []]
    right = pad_sequences(seqs, PAD)
    left = pad_sequences(seqs, PAD, side="left")
    assert right.dtype == torch.long and right.shape == (3, 3)
    assert right.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert left.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences(seqs, PAD, side="middle")


def test_collate_sft_right_padded():
    batch = [
        {"input_ids": [3, 4, 5, 6], "completion_mask": [0, 0, 1, 1]},
        {"input_ids": [3, 7], "completion_mask": [0, 1]},
    ]
    out = collate_sft(batch, pad_id=PAD)
    assert out["input_ids"].tolist() == [[3, 4, 5, 6], [3, 7, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


def test_attention_mask_comes_from_lengths_not_ids():
    # a real token equal to the pad id must still be attended to
    out = collate_sft(
        [{"input_ids": [3, PAD], "completion_mask": [0, 1]}, {"input_ids": [3], "completion_mask": [1]}], PAD
    )
    assert out["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_collate_preference_chosen_then_rejected():
    batch = [
        {
            "chosen_input_ids": [1, 2, 3],
            "chosen_completion_mask": [0, 1, 1],
            "rejected_input_ids": [1, 4],
            "rejected_completion_mask": [0, 1],
            "prompt_length": 1,
        },
        {
            "chosen_input_ids": [9, 8],
            "chosen_completion_mask": [0, 1],
            "rejected_input_ids": [9, 7, 6, 5],
            "rejected_completion_mask": [0, 1, 1, 1],
            "prompt_length": 1,
        },
    ]
    out = collate_preference(batch, pad_id=PAD)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert out[key].shape == (4, 4)
    assert out["input_ids"].tolist() == [[1, 2, 3, 0], [9, 8, 0, 0], [1, 4, 0, 0], [9, 7, 6, 5]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["completion_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]]


def test_collate_prompts_left_padded_with_passthrough():
    batch = [
        {"input_ids": [5, 6, 7], "prompt": "a", "meta": {"i": 0}},
        {"input_ids": [8], "prompt": "b", "meta": {"i": 1}},
    ]
    out = collate_prompts(batch, pad_id=PAD)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert out["prompt"] == ["a", "b"] and out["meta"] == [{"i": 0}, {"i": 1}]
    assert set(collate_prompts([{"input_ids": [1]}], PAD)) == {"input_ids", "attention_mask"}
