"""The rollout-engine interface and the Hugging Face engine: per-sample seeded sampling that is
batch-independent, a real sample from softmax, EOS handling; the factory's errors."""

import pytest
import torch

from rto.engines import (
    RolloutEngine,
    SamplingSettings,
    generate_for_prompts,
    make_engine,
    response_mask_from_ids,
    sample_seeds,
)
from rto.engines.hf import HFEngine, counter_uniform
from rto.errors import ConfigError, RtoError
from tests.conftest import make_tiny_gpt2


def _settings(tok, **kw):
    args = dict(
        max_new_tokens=10, temperature=1.0, top_p=1.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id
    )
    args.update(kw)
    return SamplingSettings(**args)


def _gen(model, tok, prompts, seeds, **kw):
    engine = make_engine("hf", model, _settings(tok, **kw))
    return generate_for_prompts(engine, [tok(p)["input_ids"] for p in prompts], seeds)


def _boost(model, token_id, amount=50.0):
    def hook(module, args, output):
        output[..., token_id] += amount
        return output

    model.lm_head.register_forward_hook(hook)


def test_counter_uniform_is_uniform_and_deterministic():
    seeds = sample_seeds(3, 7, torch.arange(8))
    u = counter_uniform(seeds, 5, 50_000)
    assert torch.equal(u, counter_uniform(seeds, 5, 50_000))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.std()) - 12**-0.5) < 0.005
    # different steps and different samples give different streams
    assert not torch.equal(u, counter_uniform(seeds, 6, 50_000))
    assert not torch.equal(u[0], u[1])


def test_sample_seeds_depend_on_run_iteration_and_index():
    a = sample_seeds(0, 0, torch.arange(4))
    assert len(set(a.tolist())) == 4
    assert not torch.equal(a, sample_seeds(1, 0, torch.arange(4)))
    assert not torch.equal(a, sample_seeds(0, 1, torch.arange(4)))
    assert torch.equal(a[2:], sample_seeds(0, 0, torch.arange(2, 4)))


def test_samples_do_not_depend_on_batch_composition(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    prompts = ["The movie", "I hated the plot, it was", "Hello"]
    seeds = sample_seeds(0, 0, torch.arange(3))
    together = _gen(model, tiny_tokenizer, prompts, seeds)
    alone = _gen(model, tiny_tokenizer, prompts[1:2], seeds[1:2])
    n = int(alone.response_mask.sum())
    assert torch.equal(together.response_ids[1, :n], alone.response_ids[0, :n])


def test_sampling_matches_softmax(tiny_tokenizer):
    """Gumbel-max with counter noise draws from softmax(logits / T): chi-square-style check."""
    torch.manual_seed(0)
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    with torch.no_grad():  # sharpen the output distribution so the check has power
        model.lm_head.weight.mul_(40.0)
    n = 3000
    roll = _gen(
        model,
        tiny_tokenizer,
        ["The movie"] * n,
        sample_seeds(1, 0, torch.arange(n)),
        max_new_tokens=1,
        temperature=0.7,
    )
    ids = tiny_tokenizer(["The movie"], return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1] / 0.7, -1)
    probs[tiny_tokenizer.pad_token_id] = 0
    probs /= probs.sum()
    freq = torch.bincount(roll.response_ids[:, 0], minlength=len(tiny_tokenizer)).double() / n
    top = probs.argsort(descending=True)[:5]
    assert float(probs[top[0]]) > 0.05  # the check is meaningful
    tol = 4 * torch.sqrt(probs[top] * (1 - probs[top]) / n) + 1e-3
    assert torch.all((freq[top] - probs[top]).abs() <= tol), (freq[top], probs[top])


def test_pad_token_is_never_sampled(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    _boost(model, tiny_tokenizer.pad_token_id)  # make the pad token by far the most likely
    roll = _gen(model, tiny_tokenizer, ["The movie"] * 4, sample_seeds(0, 0, torch.arange(4)))
    assert not bool((roll.response_ids[roll.response_mask.bool()] == tiny_tokenizer.pad_token_id).any())


def test_response_mask_counts_eos_and_masks_after():
    eos = 9
    ids = torch.tensor([[1, 2, eos, 3, eos], [1, 2, 3, 4, 5], [eos, 1, 1, 1, 1]])
    mask, ended = response_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_generation_stops_early_when_all_rows_end(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    _boost(model, tiny_tokenizer.eos_token_id)  # EOS dominates: every row ends at the first step
    roll = _gen(
        model, tiny_tokenizer, ["The movie", "Hello"], sample_seeds(0, 0, torch.arange(2)), max_new_tokens=20
    )
    assert roll.response_ids.shape[1] == 1
    assert roll.ended.all()


def test_greedy_at_temperature_zero_ignores_the_seed(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    a = _gen(model, tiny_tokenizer, ["The movie"], sample_seeds(0, 0, torch.arange(1)), temperature=0.0)
    b = _gen(model, tiny_tokenizer, ["The movie"], sample_seeds(9, 3, torch.arange(1)), temperature=0.0)
    assert torch.equal(a.response_ids, b.response_ids)
    ids = tiny_tokenizer(["The movie"], return_tensors="pt").input_ids
    expected, seq = [], ids
    with torch.no_grad():  # greedy by hand: argmax of the logits at each step (pad never chosen)
        for _ in range(int(a.response_mask.sum())):
            logits = model(seq).logits[0, -1]
            logits[tiny_tokenizer.pad_token_id] = -float("inf")
            nxt = int(logits.argmax())
            expected.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    assert a.response_ids[0, : len(expected)].tolist() == expected


def test_engine_interface_and_collation(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer)
    model.train()
    engine = HFEngine(lambda: model, _settings(tiny_tokenizer, max_new_tokens=4))
    assert isinstance(engine, RolloutEngine)
    prompts = [tiny_tokenizer("The movie")["input_ids"], tiny_tokenizer("I hated the plot, it")["input_ids"]]
    seeds = sample_seeds(0, 0, torch.arange(2))
    roll = generate_for_prompts(engine, prompts, seeds)
    assert not model.training  # the engine samples in eval mode
    assert roll.engine_logps is None  # the HF engine leaves scoring to the trainer
    assert roll.prompt_mask.tolist()[0][: roll.prompt_ids.shape[1] - len(prompts[0])] == [0] * (
        roll.prompt_ids.shape[1] - len(prompts[0])
    )  # left-padded
    assert roll.input_ids.shape == roll.attention_mask.shape
    engine.sync_weights(model)  # a no-op for the live policy
    again = generate_for_prompts(engine, prompts, seeds)
    assert torch.equal(again.response_ids, roll.response_ids)
    engine.close()


def test_make_engine_errors():
    s = SamplingSettings(4, 1.0, 1.0, eos_id=1, pad_id=0)
    with pytest.raises(ConfigError, match="unknown rollout engine 'sglang': choose one of hf, vllm"):
        make_engine("sglang", None, s)
    with pytest.raises(ConfigError, match="takes no options"):
        make_engine("hf", None, s, gpu_memory_utilization=0.5)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RtoError, match="needs the vllm package"):
            make_engine("vllm", None, s)
