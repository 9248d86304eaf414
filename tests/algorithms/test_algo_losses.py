import math

import pytest
import torch

from rto.algorithms.losses import (
    bradley_terry_loss,
    dpo_loss,
    ppo_policy_loss,
    reward_centering,
    sequential_kl,
    sft_loss,
    tdpo_loss,
    value_loss,
)


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


# --------------------------------------------------------------------------- SFT / BT


def test_sft_loss_is_token_nll_sum_and_count():
    lp = t(-1.0, -2.0, -5.0, -3.0).reshape(2, 2)
    mask = torch.tensor([[1, 0], [1, 1]])
    loss = sft_loss(lp, mask)
    assert (loss.total.item(), loss.count.item()) == (1 + 5 + 3, 3)
    assert loss.mean().item() == pytest.approx((1 + 5 + 3) / 3)
    assert sft_loss(lp, torch.zeros_like(mask)).mean().item() == 0.0


def test_bradley_terry_loss_hand_values():
    loss, correct = bradley_terry_loss(t(1.0, 0.0, -1.0), t(0.0, 0.0, 1.0))
    expected = softplus(-1.0) + math.log(2) + softplus(2.0)
    assert loss.total.item() == pytest.approx(expected)
    assert loss.count.item() == 3 and loss.mean().item() == pytest.approx(expected / 3)
    assert correct.item() == 1  # the tie counts as wrong
    assert not correct.requires_grad


# --------------------------------------------------------------------------- DPO family


def test_dpo_is_log2_when_policy_equals_reference():
    pc, pr = t(-3.0, -7.0), t(-4.0, -1.0)
    losses, cr, rr = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2), dtype=torch.float64))
    assert cr.abs().max() == 0 and rr.abs().max() == 0


def test_dpo_sigmoid_label_smoothing_and_ipo_hand_values():
    # chosen log-ratio +1, rejected log-ratio -1: h = 2; beta = 0.5 -> beta h = 1
    pc, rc, pr, rr = t(-1.0), t(-2.0), t(-3.0), t(-2.0)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.item() == pytest.approx(softplus(-1.0))
    assert cr.item() == pytest.approx(0.5) and rj.item() == pytest.approx(-0.5)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0))
    # IPO: (h - 1/(2 beta))^2 = (2 - 1)^2
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    assert losses.item() == pytest.approx(1.0)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.25, loss_type="ipo")
    assert losses.item() == pytest.approx(0.0)


def test_ipo_per_token_matches_a_naive_reference():
    """Per-token IPO as TRL computes it: each sequence log-ratio averaged over its completion tokens."""
    g = torch.Generator().manual_seed(0)
    lengths_c, lengths_r = [3, 7, 1, 12], [5, 2, 9, 4]
    beta = 0.1

    def tokens(n):
        return [-torch.rand((), generator=g, dtype=torch.float64).item() * 3 for _ in range(n)]

    pol_c, ref_c = [tokens(n) for n in lengths_c], [tokens(n) for n in lengths_c]
    pol_r, ref_r = [tokens(n) for n in lengths_r], [tokens(n) for n in lengths_r]
    expected_avg, expected_sum = [], []
    for i in range(4):
        avg_c = sum(p - q for p, q in zip(pol_c[i], ref_c[i])) / len(pol_c[i])
        avg_r = sum(p - q for p, q in zip(pol_r[i], ref_r[i])) / len(pol_r[i])
        expected_avg.append((avg_c - avg_r - 1 / (2 * beta)) ** 2)
        h = sum(pol_c[i]) - sum(ref_c[i]) - sum(pol_r[i]) + sum(ref_r[i])
        expected_sum.append((h - 1 / (2 * beta)) ** 2)
    pc, rc = t(*map(sum, pol_c)), t(*map(sum, ref_c))
    pr, rr = t(*map(sum, pol_r)), t(*map(sum, ref_r))
    lengths = {"chosen_lengths": torch.tensor(lengths_c), "rejected_lengths": torch.tensor(lengths_r)}
    avg, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", ipo_per_token=True, **lengths)
    torch.testing.assert_close(avg, t(*expected_avg), rtol=1e-12, atol=0)
    # the default is the paper's summed form; lengths do not change it
    summed, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", **lengths)
    torch.testing.assert_close(summed, t(*expected_sum), rtol=1e-12, atol=0)
    # rewards stay the implicit DPO rewards of the summed log-ratios, as for every loss
    torch.testing.assert_close(cr, beta * (pc - rc))
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", ipo_per_token=True)


def test_reward_centering_penalises_the_pair_mean_not_the_margin():
    c, r = t(1.0, -2.0, 3.0), t(0.5, 1.0, -3.0)
    torch.testing.assert_close(reward_centering(c, r), t(2.25, 1.0, 0.0))
    # shifting both scores of a pair apart by the same amount leaves it unchanged
    torch.testing.assert_close(reward_centering(c + 5, r - 5), reward_centering(c, r))


def test_simpo_hand_value():
    # length-normalised: -4/2 = -2 and -9/3 = -3; m = 2 * (1) - 0.5 = 1.5
    losses, cr, rj = dpo_loss(
        t(-4.0), t(-9.0), None, None, beta=2.0, loss_type="simpo",
        chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([3]), simpo_gamma=0.5,
    )  # fmt: skip
    assert losses.item() == pytest.approx(softplus(-1.5))
    assert cr.item() == pytest.approx(-4.0) and rj.item() == pytest.approx(-6.0)
    # already-normalised inputs without lengths give the same loss
    losses2, _, _ = dpo_loss(t(-2.0), t(-3.0), None, None, beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    torch.testing.assert_close(losses, losses2)
    with pytest.raises(ValueError):
        dpo_loss(t(-2.0), t(-3.0), None, None, loss_type="simpo", chosen_lengths=torch.tensor([2]))


def test_rdpo_hand_value():
    # R-DPO (Park et al. 2024, arXiv 2403.19159): margin beta h + alpha (|y_c| - |y_r|)
    pc, rc, pr, rr = t(-1.0), t(-2.0), t(-3.0), t(-2.0)  # h = 2
    losses, _, _ = dpo_loss(
        pc, pr, rc, rr, beta=0.5, loss_type="rdpo", rdpo_alpha=0.1,
        chosen_lengths=torch.tensor([10]), rejected_lengths=torch.tensor([5]),
    )  # fmt: skip
    assert losses.item() == pytest.approx(softplus(-(1.0 + 0.5)))
    # alpha = 0 recovers DPO
    l0, _, _ = dpo_loss(
        pc, pr, rc, rr, beta=0.5, loss_type="rdpo", rdpo_alpha=0.0,
        chosen_lengths=torch.tensor([10]), rejected_lengths=torch.tensor([5]),
    )  # fmt: skip
    torch.testing.assert_close(l0, dpo_loss(pc, pr, rc, rr, beta=0.5)[0])
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, loss_type="rdpo")


def test_rdpo_pushes_a_longer_chosen_less():
    """At zero log-ratio with alpha 0.05: chosen 20 tokens longer -> -log s(+1) = 0.313 (the length
    already explains the preference, little to push); chosen 20 tokens shorter -> -log s(-1) = 1.313."""
    z = t(-10.0, -10.0)
    losses, _, _ = dpo_loss(
        z, z, z.clone(), z.clone(), beta=0.1, loss_type="rdpo", rdpo_alpha=0.05,
        chosen_lengths=torch.tensor([30, 10]), rejected_lengths=torch.tensor([10, 30]),
    )  # fmt: skip
    assert losses[0].item() == pytest.approx(softplus(-1.0)) == pytest.approx(0.3133, abs=1e-4)
    assert losses[1].item() == pytest.approx(softplus(1.0)) == pytest.approx(1.3133, abs=1e-4)
    # the gradient pushes a pair less when its chosen response is the longer one
    pc = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    losses, _, _ = dpo_loss(
        pc, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64), beta=0.1, loss_type="rdpo", rdpo_alpha=0.05,
        chosen_lengths=torch.tensor([30, 10]), rejected_lengths=torch.tensor([10, 30]),
    )  # fmt: skip
    losses.sum().backward()
    assert abs(pc.grad[0].item()) < abs(pc.grad[1].item())


def test_dpo_validation():
    x = t(0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="nope")
    with pytest.raises(ValueError, match="ref_"):
        dpo_loss(x, x, None, None)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.0)


def test_tdpo_hand_values_and_stop_gradient():
    pc, rc, pr, rr = t(-1.0), t(-2.0), t(-3.0), t(-2.0)  # h = 2, beta = 0.5 -> u = 1
    kl_c = t(0.2).requires_grad_()
    kl_r = t(1.0).requires_grad_()
    l1, cr, rj = tdpo_loss(pc, pr, rc, rr, kl_c, kl_r, beta=0.5, version=1)
    assert l1.item() == pytest.approx(softplus(-(1.0 - 0.5 * 0.8)))
    assert cr.item() == pytest.approx(0.5) and rj.item() == pytest.approx(-0.5)
    l1.sum().backward()
    assert kl_c.grad.item() != 0  # TDPO1 pushes on both KLs
    kl_c.grad = None
    l2, _, _ = tdpo_loss(pc, pr, rc, rr, kl_c, kl_r, beta=0.5, alpha=0.5, version=2)
    # delta2 = 0.5 * 1.0 - 0.5 * 0.2 = 0.4; margin = 1 - 0.5 * 0.4
    assert l2.item() == pytest.approx(softplus(-0.8))
    l2.sum().backward()
    assert kl_c.grad is None or kl_c.grad.item() == 0  # stop-gradient on the chosen KL
    assert kl_r.grad.item() != 0
    with pytest.raises(ValueError):
        tdpo_loss(pc, pr, rc, rr, kl_c, kl_r, version=3)


def test_sequential_kl_direction_and_mask():
    torch.manual_seed(0)
    pol = torch.randn(2, 4, 5)
    ref = torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = sequential_kl(pol, ref, mask)
    expected = torch.zeros(2)
    for b in range(2):
        for s in range(4):
            if mask[b, s]:
                p_ref = torch.distributions.Categorical(logits=ref[b, s])
                p_pol = torch.distributions.Categorical(logits=pol[b, s])
                expected[b] += torch.distributions.kl_divergence(p_ref, p_pol)  # KL(ref || pol)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sequential_kl(ref, ref, mask), torch.zeros(2), atol=1e-6, rtol=0)
    # temperature scales both models' logits
    torch.testing.assert_close(
        sequential_kl(pol, ref, mask, temperature=2.0), sequential_kl(pol / 2, ref / 2, mask)
    )


# --------------------------------------------------------------------------- PPO


def _naive_seq_then_batch(per_token_fn, mask):
    row_means = []
    for b in range(mask.shape[0]):
        vals = [per_token_fn(b, s) for s in range(mask.shape[1]) if mask[b, s]]
        if vals:
            row_means.append(sum(vals) / len(vals))
    return sum(row_means) / len(row_means)


def _batch():
    torch.manual_seed(1)
    B, T = 4, 6
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate((6, 3, 0, 1)):
        mask[b, :n] = True
    old = torch.randn(B, T, dtype=torch.float64)
    new = old + 0.4 * torch.randn(B, T, dtype=torch.float64)
    new[~mask] = 50.0  # garbage at padding must not matter
    adv = torch.randn(B, T, dtype=torch.float64)
    return mask, old, new, adv


def test_ppo_policy_loss_matches_loop():
    mask, old, new, adv = _batch()
    eps = 0.2
    new = new.clone().requires_grad_()
    loss, stats = ppo_policy_loss(new, old, adv, mask, clip_eps=eps)

    def per_token(b, s):
        r = math.exp(new[b, s].item() - old[b, s].item())
        a = adv[b, s].item()
        return -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)

    assert loss.item() == pytest.approx(_naive_seq_then_batch(per_token, mask))
    n_clipped, n_valid, ratios = 0, 0, []
    for b, s in mask.nonzero().tolist():
        r = math.exp(new[b, s].item() - old[b, s].item())
        a = adv[b, s].item()
        n_valid += 1
        n_clipped += -min(max(r, 1 - eps), 1 + eps) * a > -r * a
        ratios.append(r)
    assert 0 < n_clipped < n_valid  # the example exercises both branches
    assert stats["clipfrac"].item() == pytest.approx(n_clipped / n_valid)
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / n_valid)
    k3 = [r - 1 - math.log(r) for r in ratios]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / n_valid)
    loss.backward()
    assert torch.all(new.grad[~mask] == 0)
    assert torch.isfinite(new.grad).all()


def test_ppo_ratio_one_gives_minus_mean_advantage():
    mask, old, _, adv = _batch()
    loss, stats = ppo_policy_loss(old.clone(), old, adv, mask)
    expected = -_naive_seq_then_batch(lambda b, s: adv[b, s].item(), mask)
    assert loss.item() == pytest.approx(expected)
    assert stats["clipfrac"].item() == 0
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-12)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)


def test_value_loss_matches_loop_and_no_clip():
    mask, old_v, v, ret = _batch()
    clip = 0.2
    loss, stats = value_loss(v, old_v, ret, mask, clip_range=clip)

    def per_token(b, s):
        vv, ov, rr = v[b, s].item(), old_v[b, s].item(), ret[b, s].item()
        vc = ov + min(max(vv - ov, -clip), clip)
        return 0.5 * max((vv - rr) ** 2, (vc - rr) ** 2)

    assert loss.item() == pytest.approx(_naive_seq_then_batch(per_token, mask))
    n_clip = sum(
        (old_v[b, s] + (v[b, s] - old_v[b, s]).clamp(-clip, clip) - ret[b, s]) ** 2
        > (v[b, s] - ret[b, s]) ** 2
        for b, s in mask.nonzero().tolist()
    )
    assert stats["vf_clipfrac"].item() == pytest.approx(int(n_clip) / int(mask.sum()))
    loss_nc, stats_nc = value_loss(v, old_v, ret, mask, clip_range=None)
    expected = _naive_seq_then_batch(lambda b, s: 0.5 * (v[b, s].item() - ret[b, s].item()) ** 2, mask)
    assert loss_nc.item() == pytest.approx(expected)
    assert stats_nc["vf_clipfrac"].item() == 0
