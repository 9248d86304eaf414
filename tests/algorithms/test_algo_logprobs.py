import math

import pytest
import torch
from conftest import make_tiny_gpt2

from rto.algorithms.logprobs import (
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    sequence_logps,
    shifted_token_logprobs,
    token_logprobs,
    token_logratio,
)


def _naive_logprobs(logits, labels, temperature=1.0):
    out = torch.zeros(labels.shape, dtype=torch.float64)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            z = logits[b, t].double() / temperature
            out[b, t] = z[labels[b, t]] - math.log(sum(math.exp(v) for v in z.tolist()))
    return out


def test_token_logprobs_matches_naive_and_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5) * 3
    labels = torch.randint(0, 5, (2, 3))
    for temp in (1.0, 0.7, 2.0):
        got = token_logprobs(logits, labels, temperature=temp)
        assert got.shape == (2, 3)
        torch.testing.assert_close(got.double(), _naive_logprobs(logits, labels, temp), atol=1e-5, rtol=0)
    # temperature actually changes the result
    assert not torch.allclose(token_logprobs(logits, labels, 2.0), token_logprobs(logits, labels, 1.0))


def test_excluded_ids_renormalise_over_the_other_tokens():
    """What the sampler draws from when it never samples the pad token: softmax over the other tokens."""
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 6, dtype=torch.float64) * 2
    logits[0, 0, 5] = 12.0  # the excluded token takes almost all the mass here (the exact path)
    labels = torch.randint(0, 5, (2, 3))
    for temp in (1.0, 0.7):
        got = token_logprobs(logits, labels, temperature=temp, excluded_ids=[5])
        naive = torch.zeros(2, 3, dtype=torch.float64)
        for b in range(2):
            for t in range(3):
                z = [v / temp for v in logits[b, t].tolist()]
                naive[b, t] = z[labels[b, t]] - math.log(sum(math.exp(v) for v in z[:5]))
        torch.testing.assert_close(got, naive, atol=1e-10, rtol=0)
        # the kept tokens' probabilities sum to one
        every = torch.arange(5).expand(2, 3, 5)
        total = torch.stack([token_logprobs(logits, every[..., k], temp, [5]) for k in range(5)], -1).exp()
        torch.testing.assert_close(total.sum(-1), torch.ones(2, 3, dtype=torch.float64))
        p = torch.softmax(logits[..., :5] / temp, -1)
        torch.testing.assert_close(
            entropy_from_logits(logits, temp, excluded_ids=[5]), -(p * p.log()).sum(-1), atol=1e-10, rtol=0
        )
    # gradients flow, and the shifted form passes the exclusion on
    lg = logits.clone().requires_grad_(True)
    token_logprobs(lg, labels, excluded_ids=[5]).sum().backward()
    assert torch.isfinite(lg.grad).all()
    ids = torch.randint(0, 5, (2, 4))
    torch.testing.assert_close(
        shifted_token_logprobs(logits.repeat(1, 2, 1)[:, :4], ids, excluded_ids=[5]),
        token_logprobs(logits.repeat(1, 2, 1)[:, :3], ids[:, 1:], excluded_ids=[5]),
    )


def test_token_logprobs_low_precision_is_computed_in_float32():
    torch.manual_seed(1)
    logits = (torch.randn(3, 4, 50) * 4).bfloat16()
    labels = torch.randint(0, 50, (3, 4))
    got = token_logprobs(logits, labels)
    assert got.dtype == torch.float32
    ref = token_logprobs(logits.float(), labels)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_token_logprobs_ignore_index_and_shape_check():
    logits = torch.randn(1, 3, 4)
    labels = torch.tensor([[1, -100, 2]])
    got = token_logprobs(logits, labels)
    assert got[0, 1] == 0
    assert got[0, 0] < 0
    with pytest.raises(ValueError):
        token_logprobs(logits, labels[:, :2])
    with pytest.raises(ValueError):
        token_logprobs(logits, labels, temperature=0.0)


def test_shifted_token_logprobs_scores_next_token():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 6)
    ids = torch.randint(0, 6, (2, 4))
    got = shifted_token_logprobs(logits, ids)
    assert got.shape == (2, 3)
    for t in range(3):
        expected = torch.log_softmax(logits[:, t], -1).gather(-1, ids[:, t + 1 : t + 2]).squeeze(-1)
        torch.testing.assert_close(got[:, t], expected)


def test_entropy():
    logits = torch.zeros(1, 2, 8)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((1, 2), math.log(8)))
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 7)
    for temp in (1.0, 0.5):
        p = torch.softmax(logits.double() / temp, -1)
        expected = -(p * p.log()).sum(-1)
        torch.testing.assert_close(entropy_from_logits(logits, temp).double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        entropy_from_logits(logits.bfloat16()), entropy_from_logits(logits.bfloat16().float())
    )


def test_masked_reductions():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, mask).item() == 7.0
    torch.testing.assert_close(masked_sum(x, mask, dim=-1), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(7.0 / 3))
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 4.0]))
    # a row with no valid element gives 0, not NaN
    empty = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, empty, dim=-1), torch.tensor([1.5, 0.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    valid = torch.tensor([1.0, 2.0, 4.0])
    torch.testing.assert_close(masked_var(x, mask), valid.var())
    torch.testing.assert_close(masked_var(x, mask, unbiased=False), valid.var(unbiased=False))
    assert masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0


def test_sequence_logps_and_logratio():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 3.0], [-0.5, -1.5, 7.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(sequence_logps(lp, mask), torch.tensor([-3.0, -1.5]))
    lr = token_logratio(lp, ref, mask)
    torch.testing.assert_close(lr, torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, -7.5]]))


def test_left_and_right_padding_give_same_sequence_logps(tiny_tokenizer):
    """A causal model scored with attention_mask + position_ids is padding-side invariant."""
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    pad = tiny_tokenizer.pad_token_id
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, len(tiny_tokenizer), (n,), generator=g) for n in (6, 10, 8)]
    prompt_lens = [2, 4, 3]
    T = max(len(s) for s in seqs)

    def score(left: bool):
        ids = torch.full((len(seqs), T), pad)
        attn = torch.zeros(len(seqs), T, dtype=torch.long)
        resp = torch.zeros(len(seqs), T, dtype=torch.bool)  # response tokens, by token index
        for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
            start = T - len(s) if left else 0
            ids[i, start : start + len(s)] = s
            attn[i, start : start + len(s)] = 1
            resp[i, start + p : start + len(s)] = True
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        lp = shifted_token_logprobs(logits, ids)
        return sequence_logps(lp, resp[:, 1:])

    right, left = score(left=False), score(left=True)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    # and both equal scoring each sequence alone, unpadded
    for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
        with torch.no_grad():
            logits = model(input_ids=s[None]).logits
        alone = shifted_token_logprobs(logits, s[None])[0, p - 1 :].sum()
        torch.testing.assert_close(right[i], alone, atol=1e-5, rtol=1e-5)
