import math

import pytest
import torch

from rto.algorithms.losses import ppo_policy_loss
from rto.algorithms.rollout_correction import logprob_mismatch, truncated_is_weights


def test_truncated_is_weights_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    trainer = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    engine = trainer + torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    engine[0, 4] = float("nan")  # invalid positions may hold anything
    cap = 2.0
    w = truncated_is_weights(trainer, engine, mask, cap)
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                expected = min(math.exp(trainer[b, t].item() - engine[b, t].item()), cap)
            else:
                expected = 0.0
            assert w[b, t].item() == pytest.approx(expected, rel=1e-12, abs=0)
    assert (w <= cap).all() and torch.isfinite(w).all()
    assert (w[mask.bool()] == cap).any() and (w[mask.bool()] < 1).any()  # both regimes are exercised


def test_weights_are_one_when_engine_and_trainer_agree_and_carry_no_gradient():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    w = truncated_is_weights(lp, lp.detach().clone(), torch.ones(2, 2), cap=2.0)
    assert torch.equal(w, torch.ones(2, 2))
    assert not w.requires_grad


def test_cap_must_be_positive():
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.0)


def test_weighting_the_advantage_weights_each_token_s_clipped_loss():
    """The trainer applies TIS as advantages * w. Per token this must equal w * the plain clipped term
    -min(r A, clip(r, 1-eps, 1+eps) A) (checked one valid token at a time, so whatever the loss's
    reduction over tokens, the token's own term is what is compared)."""
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(2, 4, generator=g, dtype=torch.float64) * 2
    new = old + 0.4 * torch.randn(2, 4, generator=g, dtype=torch.float64)  # some ratios outside 1 +- eps
    adv = torch.randn(2, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([[0.3, 1.0, 2.0, 1.7], [0.9, 2.0, 0.05, 1.2]], dtype=torch.float64)
    eps = 0.2
    for b in range(2):
        for t in range(4):
            only = torch.zeros(2, 4, dtype=torch.bool)
            only[b, t] = True
            loss, _ = ppo_policy_loss(new, old, adv * w, only, eps)
            r = math.exp(new[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            plain = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            assert loss.item() == pytest.approx(w[b, t].item() * plain, rel=1e-12, abs=1e-15)


def test_logprob_mismatch_mean_and_max_over_valid_tokens():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 0.0, 0.0]])
    engine = torch.tensor([[-1.5, -2.0, 9.0], [-0.75, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = logprob_mismatch(trainer, engine, mask)
    assert m["logp_mismatch_mean"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    assert m["logp_mismatch_max"] == pytest.approx(0.5)
    assert logprob_mismatch(trainer, engine, torch.zeros(2, 3)) == {
        "logp_mismatch_mean": 0.0,
        "logp_mismatch_max": 0.0,
    }
