import math

import pytest
import torch

import rto.algorithms.advantages as adv_mod
from rto.algorithms.advantages import (
    explained_variance,
    gae,
    masked_whiten,
    reinforce_pp_advantages,
    reinforce_pp_returns,
)


def _batch(seed=0, B=6, T=9, left_offset=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    lengths = [T, 1, 4, 7, 2, 5][:B]
    for b, n in enumerate(lengths):
        start = (b % 3) if left_offset else 0
        mask[b, start : min(T, start + n)] = True
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards[~mask] = float("nan")  # garbage at padding must not leak
    values[~mask] = 1e9
    return rewards, values, mask


def _naive_gae(rewards, values, mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    ret = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [s for s in range(rewards.shape[1]) if mask[b, s]]
        last_gae = 0.0
        for i in reversed(range(len(idx))):
            s = idx[i]
            next_v = values[b, idx[i + 1]].item() if i + 1 < len(idx) else 0.0
            delta = rewards[b, s].item() + gamma * next_v - values[b, s].item()
            last_gae = delta + gamma * lam * last_gae
            adv[b, s] = last_gae
            ret[b, s] = last_gae + values[b, s].item()
    return adv, ret


def _naive_returns(rewards, mask, gamma):
    out = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        g = 0.0
        for s in reversed(range(rewards.shape[1])):
            if mask[b, s]:
                g = rewards[b, s].item() + gamma * g
                out[b, s] = g
    return out


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
@pytest.mark.parametrize("left_offset", [False, True])
def test_gae_matches_naive_loop(gamma, lam, left_offset):
    rewards, values, mask = _batch(left_offset=left_offset)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    exp_adv, exp_ret = _naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_long_sequence_scan_path(monkeypatch):
    rewards, values, mask = _batch(seed=3)
    expected = gae(rewards, values, mask, 1.0, 0.95)
    monkeypatch.setattr(adv_mod, "_MATRIX_MAX_T", 0)
    got = gae(rewards, values, mask, 1.0, 0.95)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_gae_single_token_hand_value():
    # one token, terminal: A = r - V, returns = r
    adv, ret = gae(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 3.0]]), torch.tensor([[1, 0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.0, 0.0]]))


def test_gae_is_stable_for_long_responses():
    T = 1500
    mask = torch.ones(2, T, dtype=torch.bool)
    rewards = torch.zeros(2, T)
    rewards[:, -1] = 1.0
    adv, ret = gae(rewards, torch.zeros(2, T), mask, gamma=1.0, lam=0.95)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv[0, -1], torch.tensor(1.0))
    torch.testing.assert_close(adv[0, -11], torch.tensor(0.95**10))
    torch.testing.assert_close(ret, adv)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_returns_match_loop(gamma):
    rewards, _, mask = _batch(seed=1, left_offset=True)
    got = reinforce_pp_returns(rewards, mask, gamma)
    torch.testing.assert_close(got, _naive_returns(rewards, mask, gamma))
    assert (got[~mask] == 0).all()


def _naive_whiten(x, mask, shift_mean=True, eps=1e-8):
    vals = x[mask]
    mean, var = vals.mean(), vals.var()  # unbiased
    out = torch.zeros_like(x)
    w = (vals - mean) / torch.sqrt(var + eps)
    out[mask] = w + mean if not shift_mean else w
    return out


def test_masked_whiten_matches_naive_and_ignores_padding():
    x, _, mask = _batch(seed=2)
    x = x.nan_to_num(7.0)
    got = masked_whiten(x, mask)
    torch.testing.assert_close(got, _naive_whiten(x, mask))
    assert got[mask].mean().abs() < 1e-10
    assert got[mask].std().item() == pytest.approx(1.0, abs=1e-6)
    x2 = x.clone()
    x2[~mask] = -1234.0
    torch.testing.assert_close(masked_whiten(x2, mask), got)
    assert (got[~mask] == 0).all()
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), _naive_whiten(x, mask, False))
    # float32 input stays float32
    assert masked_whiten(x.float(), mask).dtype == torch.float32


def test_masked_whiten_reduce_fn_equals_concatenated_batch():
    """Two simulated processes sharing (count, sum, sumsq) through a fake all-reduce."""
    x, _, mask = _batch(seed=4, B=6)
    x = x.nan_to_num(0.0)
    xa, ma, xb, mb = x[:2], mask[:2], x[2:], mask[2:]

    seen = []

    def capture(t):
        seen.append(t.clone())
        return t

    masked_whiten(xa, ma, reduce_fn=capture)
    masked_whiten(xb, mb, reduce_fn=capture)
    assert len(seen) == 2 and seen[0].shape == (3,)
    stats_a, stats_b = seen

    calls = []

    def reduce_for_a(t):
        calls.append(1)
        return t + stats_b

    wa = masked_whiten(xa, ma, reduce_fn=reduce_for_a)
    wb = masked_whiten(xb, mb, reduce_fn=lambda t: t + stats_a)
    assert len(calls) == 1  # one collective per call
    full = masked_whiten(x, mask)
    torch.testing.assert_close(torch.cat([wa, wb]), full)
    # the local-only result differs: the statistics really are global
    assert not torch.allclose(masked_whiten(xa, ma), wa)
    # reinforce++ advantages go through the same path
    torch.testing.assert_close(
        reinforce_pp_advantages(xa, ma, reduce_fn=lambda t: t + _stats(reinforce_pp_returns(xb, mb), mb)),
        reinforce_pp_advantages(x, mask)[:2],
    )


def _stats(x, mask):
    seen = []
    masked_whiten(x, mask, reduce_fn=lambda t: seen.append(t) or t)
    return seen[0]


def test_masked_whiten_degenerate():
    mask = torch.tensor([[0, 0], [0, 0]], dtype=torch.bool)
    assert (masked_whiten(torch.ones(2, 2), mask) == 0).all()
    one = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)
    out = masked_whiten(torch.tensor([[5.0, 1.0], [2.0, 3.0]]), one)
    assert torch.isfinite(out).all() and (out == 0).all()


def test_reinforce_pp_advantages_are_whitened_returns():
    rewards, _, mask = _batch(seed=5)
    got = reinforce_pp_advantages(rewards, mask, gamma=1.0)
    torch.testing.assert_close(got, _naive_whiten(_naive_returns(rewards, mask, 1.0), mask))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask) == pytest.approx(0.0, abs=1e-12)
    values = returns + torch.tensor([[1.0, -1.0, 1.0, 50.0], [-1.0, 1.0, 7.0, 7.0]])
    # Var[R - V] = var([-1, 1, -1, 1, -1]) = 1.2 (unbiased); Var[R] = 2.5
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 1.2 / 2.5)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))
