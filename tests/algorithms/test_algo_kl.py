import math

import pytest
import torch

from rto.algorithms.kl import AdaptiveKLController, FixedKLController, kl_penalty


def test_kl_estimators_hand_values():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(logp, ref), kl_penalty(logp, ref, "k1"))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.125, 0.5, 0.0]))
    k3 = torch.tensor([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = (p * (p / q).log()).sum()
    # exact expectation over the sample space y ~ p
    for kind in ("k1", "k3"):
        est = (p * kl_penalty(p.log(), q.log(), kind)).sum()
        torch.testing.assert_close(est, true_kl)


def test_fixed_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 512)
    assert c.value == 0.05
    c2 = FixedKLController(0.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05
    with pytest.raises(ValueError):
        FixedKLController(-1.0)


def test_adaptive_controller_hand_computation():
    c = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    c.update(current_kl=9.0, n_steps=256)  # error 0.5 clipped to 0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    v = c.value
    c.update(current_kl=6.6, n_steps=100)  # error 0.1
    assert c.value == pytest.approx(v * (1 + 0.1 * 100 / 10000))
    v = c.value
    c.update(current_kl=0.0, n_steps=1000)  # error -1 clipped to -0.2
    assert c.value == pytest.approx(v * (1 - 0.2 * 1000 / 10000))
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(c.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (c.value, 6.0, 10000.0)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
