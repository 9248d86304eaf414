import pytest
import torch

from rto.algorithms.rewards import REWARD_MODES, TokenRewards, compose_token_rewards, last_token_index

NAN = float("nan")

# Two sequences, T = 6. Row 0 has 4 valid tokens (H = 3) then padding; row 1 is full (H = 5).
# Padding positions hold garbage (and a sentence end) that must never leak into the rewards.
MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
KL = torch.tensor([[1.0, 2, 3, 4, 99, NAN], [1, 1, 1, 1, 1, 1]])
LOGRATIO = torch.tensor([[2.0, -2, 4, 6, 99, NAN], [1, 2, 3, 4, 5, 6]])
SENT_END = torch.tensor([[0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0]], dtype=torch.bool)
RM = torch.tensor([10.0, 20.0])
BETAS = dict(beta1=0.5, beta2=0.1, beta3=1.0)

# Hand-computed parts with beta1 = 0.5, beta2 = 0.1, beta3 = 1:
KL_PART = torch.tensor([[-0.1, -0.2, -0.3, -0.4, 0, 0], [-0.1] * 6])
DENSE = torch.tensor([[1.0, -1, 2, 3, 0, 0], [0.5, 1, 1.5, 2, 2.5, 3]])
SCORE = torch.tensor([[0, 0, 0, 10.0, 0, 0], [0, 0, 0, 0, 0, 20.0]])
SEMI = torch.tensor([[0, 0.0, 0, 5, 0, 0], [0, 0, 3, 0, 4.5, 3]])
DDPO = torch.tensor([[0, 0, 0, 5.0, 0, 0], [0, 0, 0, 0, 0, 10.5]])
ZERO = torch.zeros(2, 6)


def compose(mode, **kw):
    args = dict(mask=MASK, kl=KL, rm_scores=RM, dpo_logratio=LOGRATIO, sentence_end_mask=SENT_END, **BETAS)
    args.update(kw)
    return compose_token_rewards(mode, **args)


def check(r: TokenRewards, kl, dpo, score, shaping):
    torch.testing.assert_close(r.kl, kl)
    torch.testing.assert_close(r.dpo, dpo)
    torch.testing.assert_close(r.score, score)
    torch.testing.assert_close(r.shaping_correction, shaping)
    torch.testing.assert_close(r.total, kl + dpo + score + shaping)
    for part in (r.total, r.kl, r.dpo, r.score, r.shaping_correction):
        assert torch.isfinite(part).all()
        assert (part[~MASK] == 0).all(), "a reward landed on padding"


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 3, 2, 0]
    assert last_token_index(mask.bool()).dtype == torch.long
    with pytest.raises(ValueError, match="no valid token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_every_mode_hand_example():
    check(compose("ppo"), KL_PART, ZERO, SCORE, ZERO)
    check(compose("rto"), KL_PART, DENSE, SCORE, ZERO)
    check(compose("semi-rto"), KL_PART, SEMI, SCORE, ZERO)
    check(compose("ddpo"), KL_PART, DDPO, SCORE, ZERO)
    check(compose("rs-ppo"), KL_PART, DENSE, SCORE, -DDPO)
    check(compose("dpo-only"), KL_PART, DENSE, ZERO, ZERO)
    check(compose("dpo-only", rm_scores=None), KL_PART, DENSE, ZERO, ZERO)
    # ppo ignores the DPO model entirely
    check(compose("ppo", dpo_logratio=None, sentence_end_mask=None), KL_PART, ZERO, SCORE, ZERO)


def test_paper_formula_rto_total():
    """r_h = b1*logratio - b2*kl + 1[h=H]*b3*RM, written out for row 1 (full row)."""
    r = compose_token_rewards("rto", MASK, KL, RM, LOGRATIO, beta1=0.05, beta2=0.01, beta3=1.0)
    expected = 0.05 * LOGRATIO[1] - 0.01 * KL[1]
    expected[-1] += RM[1]
    torch.testing.assert_close(r.total[1], expected)


def test_dpo_reward_clip_applies_per_token_in_every_mode():
    clipped = torch.tensor([[1.0, -1, 1.5, 1.5, 0, 0], [0.5, 1, 1.5, 1.5, 1.5, 1.5]])
    check(compose("rto", dpo_reward_clip=1.5), KL_PART, clipped, SCORE, ZERO)
    semi = torch.tensor([[0, 0.0, 0, 3, 0, 0], [0, 0, 3, 0, 3, 1.5]])
    check(compose("semi-rto", dpo_reward_clip=1.5), KL_PART, semi, SCORE, ZERO)
    ddpo = torch.tensor([[0, 0, 0, 3.0, 0, 0], [0, 0, 0, 0, 0, 7.5]])
    check(compose("ddpo", dpo_reward_clip=1.5), KL_PART, ddpo, SCORE, ZERO)
    check(compose("rs-ppo", dpo_reward_clip=1.5), KL_PART, clipped, SCORE, -ddpo)


def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match="mode"):
        compose("grpo")
    for mode in ("rto", "semi-rto", "ddpo", "rs-ppo", "dpo-only"):
        with pytest.raises(ValueError, match="dpo_logratio"):
            compose(mode, dpo_logratio=None)
    for mode in ("ppo", "rto", "semi-rto", "ddpo", "rs-ppo"):
        with pytest.raises(ValueError, match="rm_scores"):
            compose(mode, rm_scores=None)
    with pytest.raises(ValueError, match="sentence_end_mask"):
        compose("semi-rto", sentence_end_mask=None)
    for name in ("beta1", "beta2", "beta3"):
        with pytest.raises(ValueError, match=name):
            compose("rto", **{name: -0.1})
    with pytest.raises(ValueError, match="dpo_reward_clip"):
        compose("rto", dpo_reward_clip=-1.0)
    with pytest.raises(ValueError, match="kl"):
        compose("rto", kl=KL[:, :5])
    with pytest.raises(ValueError, match="rm_scores"):
        compose("rto", rm_scores=RM[:1])
    with pytest.raises(ValueError, match="no valid token"):
        compose("rto", mask=torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool))


def _random_batch(seed, B=7, T=12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    lengths[1] = 1
    mask = torch.arange(T)[None] < lengths[:, None]
    kl = torch.randn(B, T, generator=g)
    lr = torch.randn(B, T, generator=g) * 3
    kl[~mask] = 1e6
    lr[~mask] = -1e6
    sent = torch.rand(B, T, generator=g) < 0.3
    rm = torch.randn(B, generator=g)
    return mask, kl, lr, sent, rm


def _naive_semi_rto_dpo(mask, lr, sent, beta1, clip):
    out = torch.zeros_like(lr)
    for b in range(mask.shape[0]):
        valid = [s for s in range(mask.shape[1]) if mask[b, s]]
        acc = 0.0
        for s in valid:
            d = beta1 * lr[b, s].item()
            if clip is not None:
                d = max(-clip, min(clip, d))
            acc += d
            if sent[b, s] or s == valid[-1]:
                out[b, s] = acc
                acc = 0.0
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("clip", [None, 0.1])
def test_properties_on_random_batches(seed, clip):
    mask, kl, lr, sent, rm = _random_batch(seed)
    kw = dict(mask=mask, kl=kl, rm_scores=rm, dpo_logratio=lr, sentence_end_mask=sent, dpo_reward_clip=clip)
    out = {m: compose_token_rewards(m, **kw) for m in REWARD_MODES}
    for m, r in out.items():
        assert (r.total[~mask] == 0).all(), m
        assert torch.isfinite(r.total).all(), m
    ret = {m: r.total.sum(-1) for m, r in out.items()}
    # RS-PPO's undiscounted return equals PPO's for every sequence
    torch.testing.assert_close(ret["rs-ppo"], ret["ppo"])
    # DDPO and Semi-RTO move the same DPO reward around: same return as RTO
    torch.testing.assert_close(ret["ddpo"], ret["rto"])
    torch.testing.assert_close(ret["semi-rto"], ret["rto"])
    torch.testing.assert_close(ret["dpo-only"], ret["rto"] - rm)
    # the semi-rto placement equals a plain loop over sentences
    torch.testing.assert_close(out["semi-rto"].dpo, _naive_semi_rto_dpo(mask, lr, sent, 0.05, clip))
    # with no sentence end at all, semi-rto == ddpo; with one at every token, semi-rto == rto
    no_end = compose_token_rewards("semi-rto", **{**kw, "sentence_end_mask": torch.zeros_like(sent)})
    torch.testing.assert_close(no_end.total, out["ddpo"].total)
    all_end = compose_token_rewards("semi-rto", **{**kw, "sentence_end_mask": torch.ones_like(sent)})
    torch.testing.assert_close(all_end.total, out["rto"].total)


def test_float_mask_and_dtype():
    r = compose("rto", mask=MASK.float())
    torch.testing.assert_close(r.total, KL_PART + DENSE + SCORE)
    r64 = compose("rto", kl=KL.double(), dpo_logratio=LOGRATIO.double(), rm_scores=RM.double())
    assert r64.total.dtype == torch.float64
    r16 = compose("rto", kl=KL.bfloat16())
    assert r16.total.dtype == torch.float32
