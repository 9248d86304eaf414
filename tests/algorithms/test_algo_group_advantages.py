import math

import pytest
import torch

from rto.algorithms.advantages import gae, masked_whiten, reinforce_pp_advantages, reinforce_pp_returns
from rto.algorithms.estimators import ESTIMATORS, estimate_advantages
from rto.algorithms.group_advantages import (
    GROUP_ESTIMATORS,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from rto.algorithms.rewards import compose_token_rewards

EPS = 1e-6


def _naive(estimator, rewards, mask, groups, level, gamma=1.0):
    """Python loops over rows, positions and group members."""
    B, T = rewards.shape
    lengths = [int(mask[b].sum()) for b in range(B)]
    r = [[rewards[b, t].item() for t in range(lengths[b])] for b in range(B)]
    if level == "sequence":
        x = [[sum(r[b])] for b in range(B)]
    else:
        x = [
            [sum(gamma ** (s - t) * r[b][s] for s in range(t, lengths[b])) for t in range(lengths[b])]
            for b in range(B)
        ]
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(lengths[b]):
            col = 0 if level == "sequence" else t
            vals = [x[j][col] for j in range(B) if groups[j] == groups[b] and len(x[j]) > col]
            n = len(vals)
            if n < 2:
                continue  # no baseline at this position
            mine = x[b][col]
            mean = sum(vals) / n
            if estimator == "rloo":
                a = mine - (sum(vals) - mine) / (n - 1)
            elif estimator == "grpo":
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
                a = (mine - mean) / (std + EPS)
            else:  # dr-grpo, reinforce++-baseline
                a = mine - mean
            out[b, t] = a
    if estimator == "reinforce++-baseline":
        vals = [out[b, t].item() for b in range(B) for t in range(lengths[b])]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        for b in range(B):
            for t in range(lengths[b]):
                out[b, t] = (out[b, t].item() - mean) / math.sqrt(var + 1e-8)
    return out


def _batch(groups, lengths, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(groups)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards[~mask] = float("nan")  # garbage at padding must not leak
    return rewards, mask, torch.tensor(groups)


# groups of 2 (rows 0, 3) and (5, 1); a group of 4 interleaved with them; unequal lengths
GROUPS = [10, 11, 7, 10, 7, 11, 7, 7]
LENGTHS = [7, 3, 5, 2, 1, 6, 5, 4]


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_group_estimators_match_naive_loops(estimator, level, gamma):
    rewards, mask, groups = _batch(GROUPS, LENGTHS)
    got = group_advantages(estimator, rewards, mask, groups, level=level, gamma=gamma)
    expected = _naive(estimator, rewards, mask, GROUPS, level, gamma)
    torch.testing.assert_close(got, expected)
    assert (got[~mask] == 0).all() and torch.isfinite(got).all()
    assert got.dtype == torch.float64
    assert group_advantages(estimator, rewards.float(), mask, groups, level=level).dtype == torch.float32


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_named_functions_are_the_dispatched_ones(level):
    rewards, mask, groups = _batch(GROUPS, LENGTHS, seed=1)
    for fn, name in (
        (grpo_advantages, "grpo"),
        (rloo_advantages, "rloo"),
        (dr_grpo_advantages, "dr-grpo"),
        (reinforce_pp_baseline_advantages, "reinforce++-baseline"),
    ):
        torch.testing.assert_close(
            fn(rewards, mask, groups, level), group_advantages(name, rewards, mask, groups, level)
        )


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_degenerate_group_gets_exactly_zero_and_no_nan(estimator, level):
    # group 0: three identical rows whose float64 mean is not exact (0.1 + 0.1 + 0.1 != 0.3),
    # so a plain (x - mean) / (std + eps) would blow rounding noise up; group 1: two varied rows
    mask = torch.tensor([[1, 1, 1, 0]] * 3 + [[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor(
        [
            [0.1, 0.1, 0.1, 9.0],
            [0.1, 0.1, 0.1, -9.0],
            [0.1, 0.1, 0.1, 1.0],
            [1.0, 2.0, 0.0, 0.0],
            [0.5, -1.0, 3.0, 2.0],
        ],
        dtype=torch.float64,
    )
    groups = torch.tensor([0, 0, 0, 1, 1])
    adv = group_advantages(estimator, rewards, mask, groups, level=level)
    assert torch.isfinite(adv).all()
    if estimator == "reinforce++-baseline":  # whitening shifts every token by the batch mean
        assert adv[0].tolist() == adv[1].tolist() == adv[2].tolist()
    else:
        assert (adv[:3] == 0).all()
        assert (adv[3:][mask[3:]] != 0).any()
    # a batch that is one degenerate group: all zero, still no NaN (whitening of zeros included)
    same = group_advantages(estimator, rewards[:3], mask[:3], groups[:3], level=level)
    assert (same == 0).all()


def test_token_level_hand_computed_rloo_and_dr_grpo():
    # one group of three: returns-to-go A = [3, 2, 2], B = [1, 1], C = [3]
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    groups = torch.tensor([4, 4, 4])
    # position 0: all three run: 3 - (1 + 3)/2 = 1, 1 - (3 + 3)/2 = -2, 3 - (3 + 1)/2 = 1
    # position 1: A and B run: 2 - 1 = 1, 1 - 2 = -1; position 2: only A runs: no baseline, 0
    expected = torch.tensor([[1.0, 1.0, 0.0], [-2.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(rloo_advantages(rewards, mask, groups), expected)
    # mean baseline: position 0 mean 7/3, position 1 mean 3/2
    expected = torch.tensor([[2 / 3, 0.5, 0.0], [-4 / 3, -0.5, 0.0], [2 / 3, 0.0, 0.0]])
    torch.testing.assert_close(dr_grpo_advantages(rewards, mask, groups), expected)
    # GRPO: position 0 std = sqrt(((2/3)^2 + (4/3)^2 + (2/3)^2) / 2) = sqrt(4/3); position 1 std = sqrt(1/2)
    s0, s1 = math.sqrt(4 / 3) + EPS, math.sqrt(0.5) + EPS
    expected = torch.tensor(
        [[2 / 3 / s0, 0.5 / s1, 0.0], [-4 / 3 / s0, -0.5 / s1, 0.0], [2 / 3 / s0, 0.0, 0.0]]
    )
    torch.testing.assert_close(grpo_advantages(rewards, mask, groups), expected)


def test_token_level_on_rto_rewards_sees_what_the_sequence_level_cannot():
    # Two samples of one prompt, beta1 = beta3 = 1, KL coefficient 0.
    # Sample 0: DPO log-ratios [1, -1], RM score 2 -> rewards [1, -1 + 2] = [1, 1], returns-to-go [2, 1]
    # Sample 1: DPO log-ratios [0,  2], RM score 0 -> rewards [0, 2],              returns-to-go [2, 2]
    mask = torch.ones(2, 2, dtype=torch.bool)
    tr = compose_token_rewards(
        "rto",
        mask,
        kl=torch.zeros(2, 2),
        rm_scores=torch.tensor([2.0, 0.0]),
        dpo_logratio=torch.tensor([[1.0, -1.0], [0.0, 2.0]]),
        beta1=1.0,
        beta2=0.0,
        beta3=1.0,
    )
    torch.testing.assert_close(tr.total, torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    groups = torch.tensor([0, 0])
    # equal totals: the sequence level sees nothing; the token level credits sample 0's second token
    # with -1 (its DPO reward fell short of sample 1's) and sample 1's with +1
    assert (rloo_advantages(tr.total, mask, groups, "sequence") == 0).all()
    torch.testing.assert_close(
        rloo_advantages(tr.total, mask, groups, "token"), torch.tensor([[0.0, -1.0], [0.0, 1.0]])
    )


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
def test_sequence_level_rto_equals_ddpo(estimator):
    g = torch.Generator().manual_seed(5)
    B, T = 8, 6
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate([6, 2, 4, 5, 1, 3, 6, 4]):
        mask[b, :n] = True
    common = dict(
        mask=mask,
        kl=torch.rand(B, T, generator=g) * mask,
        rm_scores=torch.randn(B, generator=g),
        dpo_logratio=torch.randn(B, T, generator=g) * mask,
        beta1=0.5,
        beta2=0.1,
        beta3=1.0,
    )
    rto = compose_token_rewards("rto", **common).total
    ddpo = compose_token_rewards("ddpo", **common).total
    torch.testing.assert_close(rto.sum(-1), ddpo.sum(-1))  # same total, different placement
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    a_rto = group_advantages(estimator, rto, mask, groups, level="sequence")
    a_ddpo = group_advantages(estimator, ddpo, mask, groups, level="sequence")
    torch.testing.assert_close(a_rto, a_ddpo)
    assert not torch.allclose(
        group_advantages(estimator, rto, mask, groups, level="token"),
        group_advantages(estimator, ddpo, mask, groups, level="token"),
    )


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "dr-grpo"])
def test_token_level_first_token_is_the_sequence_level_advantage(estimator):
    rewards, mask, groups = _batch(GROUPS, LENGTHS, seed=3)
    tok = group_advantages(estimator, rewards, mask, groups, level="token")
    seq = group_advantages(estimator, rewards, mask, groups, level="sequence")
    torch.testing.assert_close(tok[:, 0], seq[:, 0])


def test_reinforce_pp_baseline_reduce_fn_gives_global_whitening():
    rewards, mask, groups = _batch(GROUPS, LENGTHS, seed=2)
    full = reinforce_pp_baseline_advantages(rewards, mask, groups)
    # the whitening statistics of the whole batch, handed in as if from an all-reduce
    centred = dr_grpo_advantages(rewards, mask, groups)
    captured = []
    masked_whiten(centred, mask, reduce_fn=lambda t: captured.append(t.clone()) or t)
    got = reinforce_pp_baseline_advantages(rewards, mask, groups, reduce_fn=lambda t: captured[0])
    torch.testing.assert_close(got, full)


def test_bad_inputs_are_named():
    rewards, mask, _ = _batch([0, 0, 1], [3, 2, 2])
    rewards = rewards.nan_to_num(0.5)
    with pytest.raises(ValueError, match=r"groups \[1\] have 1"):
        rloo_advantages(rewards, mask, torch.tensor([0, 0, 1]))
    left = mask.clone()
    left[1] = torch.tensor([0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"rows \[1\] are not right-padded"):
        grpo_advantages(rewards, left, torch.tensor([0, 0, 0]))
    # the sequence form does not compare positions, so left padding is fine there
    assert torch.isfinite(grpo_advantages(rewards, left, torch.tensor([0, 0, 0]), level="sequence")).all()
    with pytest.raises(ValueError, match="unknown baseline level"):
        grpo_advantages(rewards, mask, torch.tensor([0, 0, 0]), level="prompt")
    with pytest.raises(ValueError, match="unknown group estimator"):
        group_advantages("ppo", rewards, mask, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="group_index has shape"):
        grpo_advantages(rewards, mask, torch.tensor([0, 0]))


# --------------------------------------------------------------------------- the estimator table


def test_estimator_table():
    assert set(ESTIMATORS) == {"gae", "reinforce++", *GROUP_ESTIMATORS}
    assert [n for n, e in ESTIMATORS.items() if e.needs_critic] == ["gae"]
    assert {n for n, e in ESTIMATORS.items() if e.needs_groups} == set(GROUP_ESTIMATORS)
    assert ESTIMATORS["dr-grpo"].loss_aggregation == "seq-mean-token-sum-norm"


def test_estimate_advantages_dispatch():
    rewards, mask, groups = _batch(GROUPS, LENGTHS, seed=4)
    rewards = rewards.nan_to_num(0.0)
    values = torch.randn(rewards.shape, dtype=torch.float64)
    adv, ret = estimate_advantages("gae", rewards, mask, values=values, gamma=0.9, lam=0.8)
    g_adv, g_ret = gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, masked_whiten(g_adv, mask))
    torch.testing.assert_close(ret, g_ret)
    adv, ret = estimate_advantages("reinforce++", rewards, mask, gamma=0.9)
    torch.testing.assert_close(adv, reinforce_pp_advantages(rewards, mask, 0.9))
    torch.testing.assert_close(ret, adv)
    adv, ret = estimate_advantages("rloo", rewards, mask, group_index=groups, level="sequence")
    torch.testing.assert_close(adv, rloo_advantages(rewards, mask, groups, "sequence"))
    torch.testing.assert_close(ret, reinforce_pp_returns(rewards, mask))
    with pytest.raises(ValueError, match="needs the critic's values"):
        estimate_advantages("gae", rewards, mask)
    with pytest.raises(ValueError, match="needs a group index"):
        estimate_advantages("grpo", rewards, mask)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        estimate_advantages("ppo", rewards, mask)
