import math

import pytest
import torch

from rto.algorithms.losses import (
    LOSS_AGGREGATIONS,
    aggregate_loss,
    policy_loss_sum,
    value_loss_sum,
)

L = 8  # Dr. GRPO's constant (the generation budget)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 5
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate((5, 1, 0, 3, 2, 4)):  # row 2 has no token
        mask[b, :n] = True
    per_token = torch.randn(B, T, generator=g, dtype=torch.float64)
    per_token[~mask] = float("nan")  # garbage at padding must not leak
    return per_token, mask


def _naive(per_token, mask, aggregation):
    rows = [
        [per_token[b, t].item() for t in range(mask.shape[1]) if mask[b, t]] for b in range(mask.shape[0])
    ]
    rows = [r for r in rows if r]
    if aggregation == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if aggregation == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) / L for r in rows) / len(rows)


@pytest.mark.parametrize("aggregation", LOSS_AGGREGATIONS)
def test_aggregations_match_naive_loops(aggregation):
    per_token, mask = _batch()
    loss = aggregate_loss(per_token, mask, aggregation, norm_length=L)
    assert loss.mean().item() == pytest.approx(_naive(per_token, mask, aggregation))
    expected_count = int(mask.sum()) if aggregation == "token-mean" else int(mask.any(-1).sum())
    assert loss.count.item() == expected_count
    assert not loss.count.requires_grad


def test_aggregations_differ_on_unequal_lengths():
    per_token, mask = _batch(seed=1)
    values = {a: aggregate_loss(per_token, mask, a, norm_length=L).mean().item() for a in LOSS_AGGREGATIONS}
    assert len({round(v, 9) for v in values.values()}) == 3


@pytest.mark.parametrize("aggregation", LOSS_AGGREGATIONS)
def test_sum_and_count_make_any_split_give_the_same_loss_and_gradient(aggregation):
    """Micro-batches on two simulated processes: sum of totals / global count == the whole batch."""
    per_token, mask = _batch(seed=2)
    per_token = per_token.nan_to_num(0.0)
    x_full = per_token.clone().requires_grad_()
    whole = aggregate_loss(x_full * 1.5, mask, aggregation, norm_length=L).mean()
    whole.backward()

    x = per_token.clone().requires_grad_()
    pieces = [slice(0, 1), slice(1, 3), slice(3, 4), slice(4, 6)]  # process 0: first two, process 1: last two
    sums = [aggregate_loss(x[p] * 1.5, mask[p], aggregation, norm_length=L) for p in pieces]
    global_count = sum(float(s.count) for s in sums)
    for s in sums:  # each micro-batch's backward of total / global count, as a trainer does
        (s.total / global_count).backward()
    assert sum(float(s.total.detach()) for s in sums) / global_count == pytest.approx(whole.item())
    torch.testing.assert_close(x.grad, x_full.grad)
    # the local means of the pieces, averaged, are not the same thing (the split would matter)
    local = sum(float(s.mean().detach()) for s in sums) / len(sums)
    assert local != pytest.approx(whole.item())


def test_aggregation_errors():
    per_token, mask = _batch()
    with pytest.raises(ValueError, match="needs a positive norm_length"):
        aggregate_loss(per_token, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(per_token, mask, "sum")


def test_all_padding_gives_zero_in_the_graph():
    x = torch.randn(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for a in LOSS_AGGREGATIONS:
        loss = aggregate_loss(x, mask, a, norm_length=L)
        assert loss.mean().item() == 0 and loss.count.item() == 0
        loss.mean().backward()
    assert (x.grad == 0).all()


def _policy_batch():
    g = torch.Generator().manual_seed(3)
    B, T = 4, 6
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate((6, 3, 2, 1)):
        mask[b, :n] = True
    old = torch.randn(B, T, generator=g, dtype=torch.float64)
    new = old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref[~mask] = float("nan")
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    return mask, old, new, ref, adv


@pytest.mark.parametrize("aggregation", LOSS_AGGREGATIONS)
def test_policy_loss_with_kl_term_matches_loop(aggregation):
    mask, old, new, ref, adv = _policy_batch()
    eps, beta = 0.2, 0.3
    new = new.clone().requires_grad_()
    loss, stats = policy_loss_sum(
        new,
        old,
        adv,
        mask,
        eps,
        aggregation,
        norm_length=L,
        ref_logprobs=ref,
        kl_coef=beta,
        kl_estimator="k3",
    )
    per_token = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    k3s = []
    for b, s in mask.nonzero().tolist():
        r = math.exp(new[b, s].item() - old[b, s].item())
        a = adv[b, s].item()
        lr = ref[b, s].item() - new[b, s].item()
        k3 = math.exp(lr) - 1 - lr
        k3s.append(k3)
        per_token[b, s] = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a) + beta * k3
    assert loss.mean().item() == pytest.approx(_naive(per_token, mask, aggregation))
    assert stats["kl_loss"].item() == pytest.approx(sum(k3s) / len(k3s))
    loss.mean().backward()
    assert torch.isfinite(new.grad).all() and (new.grad[~mask] == 0).all()
    # without the KL term: no kl_loss stat, and the default is the per-sequence mean
    plain, stats = policy_loss_sum(new.detach(), old, adv, mask, eps)
    assert "kl_loss" not in stats
    assert plain.count.item() == int(mask.any(-1).sum())


def test_kl_term_gradient_is_k3s():
    # d/dlogp [exp(ref - logp) - 1 - (ref - logp)] = 1 - exp(ref - logp), per token
    mask = torch.ones(1, 3, dtype=torch.bool)
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    loss, _ = policy_loss_sum(
        logp, logp.detach(), torch.zeros(1, 3, dtype=torch.float64), mask, ref_logprobs=ref, kl_coef=2.0,
        aggregation="token-mean",
    )  # fmt: skip
    loss.mean().backward()
    expected = 2.0 * (1 - torch.exp(ref - logp.detach())) / 3
    torch.testing.assert_close(logp.grad, expected)


def test_value_loss_sum_aggregations():
    mask, old, new, ref, adv = _policy_batch()
    ret = ref.nan_to_num(0.0)
    for a in LOSS_AGGREGATIONS:
        loss, _ = value_loss_sum(new, old, ret, mask, 0.2, a, norm_length=L)
        per_token = torch.full(mask.shape, float("nan"), dtype=torch.float64)
        for b, s in mask.nonzero().tolist():
            v, ov, rr = new[b, s].item(), old[b, s].item(), ret[b, s].item()
            vc = ov + min(max(v - ov, -0.2), 0.2)
            per_token[b, s] = 0.5 * max((v - rr) ** 2, (vc - rr) ** 2)
        assert loss.mean().item() == pytest.approx(_naive(per_token, mask, a))
    default, _ = value_loss_sum(new, old, ret, mask, 0.2)
    assert default.count.item() == int(mask.any(-1).sum())  # seq-mean-token-mean
