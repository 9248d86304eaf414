"""The sampler draws from exactly the distribution the trainer scores: the empirical distribution of the
first response token over many seeds matches softmax(logits / T) of the scoring pass (chi-square), whatever
the checkpoint's own generation_config asks for."""

import torch
from transformers import GenerationConfig

from rto import models
from rto.engines import SamplingSettings, generate_for_prompts, make_engine, never_sampled, sample_seeds
from rto.scoring import LogProbModel
from tests.conftest import make_tiny_gpt2

N = 4000  # samples; the seeds are fixed, so the test is deterministic
T = 0.8


def _boost(model, token_ids: list[int], amount: float) -> None:
    """Make a few tokens carry most of the probability, so that each bin of the test is well filled."""

    def hook(module, args, output):
        output[..., token_ids] += amount
        return output

    model.lm_head.register_forward_hook(hook)


def make_pad_likely(model, pad_id: int, strength: float = 5.0) -> None:
    """Edit a tiny GPT-2 so that the pad token gets a large logit everywhere (about a third of the mass):
    the final layer norm's bias points along one axis and the pad's (tied) embedding along the same."""
    with torch.no_grad():
        model.transformer.ln_f.bias[0] += strength
        model.transformer.wte.weight[pad_id] = 0.0
        model.transformer.wte.weight[pad_id, 0] = 1.0


def _scored_first_token_probs(model, tok, prompt: list[int]) -> torch.Tensor:
    """(V,) probability of each token as the first response token, from the scoring pass of the trainer's
    policy role (rto.scoring, as `rto ppo` builds it)."""
    scorer = LogProbModel(model, T, excluded_ids=never_sampled(tok.eos_token_id, tok.pad_token_id))
    V = model.get_input_embeddings().num_embeddings
    ids = torch.tensor([prompt + [v] for v in range(V)])
    probs = scorer.logps(ids, torch.ones_like(ids), len(prompt))[:, 0].double().exp()
    probs[list(scorer.excluded_ids)] = 0.0  # not part of the scored distribution (their score is meaningless)
    return probs


def _sampled_first_tokens(model, tok, prompt: list[int]) -> torch.Tensor:
    s = SamplingSettings(
        max_new_tokens=2, temperature=T, top_p=1.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id
    )
    roll = generate_for_prompts(
        make_engine("hf", model, s), [prompt] * N, sample_seeds(7, 0, torch.arange(N))
    )
    return roll.response_ids[:, 0]


def _chi_square_p_value(first: torch.Tensor, probs: torch.Tensor, bins: list[int]) -> float:
    """Goodness of fit over the given tokens plus one bin for all the others."""
    counts = torch.bincount(first, minlength=len(probs)).double()
    rest = torch.ones(len(probs), dtype=torch.bool)
    rest[bins] = False
    observed = torch.cat([counts[bins], counts[rest].sum()[None]])
    expected = torch.cat([probs[bins], probs[rest].sum()[None]]) * N
    observed, expected = observed[expected > 0], expected[expected > 0]
    assert float(expected.min()) > 20, expected  # the chi-square approximation holds
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(chi2 / 2)))


def test_checkpoint_generation_config_does_not_change_sampling(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = tok("The movie was", add_special_tokens=False)["input_ids"]
    banned = tok(" great", add_special_tokens=False)["input_ids"][-1]
    folder = tmp_path / "policy"
    make_tiny_gpt2(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    # what instruct checkpoints ship: penalties and constraints that make generate() sample from another
    # distribution than the model's softmax, and sampling defaults of their own
    GenerationConfig(
        repetition_penalty=1.5, no_repeat_ngram_size=1, min_new_tokens=2, bad_words_ids=[[banned]],
        do_sample=True, temperature=0.3, top_k=5, top_p=0.5,
    ).save_pretrained(folder)  # fmt: skip
    model = models.load_causal_lm(str(folder), tok).eval()
    assert model.generation_config.repetition_penalty == 1.5
    boosted = sorted(set(prompt) | {tok.eos_token_id, banned})
    _boost(model, boosted, 4.0)
    probs = _scored_first_token_probs(model, tok, prompt)
    first = _sampled_first_tokens(model, tok, prompt)
    p_value = _chi_square_p_value(first, probs, boosted)
    assert p_value > 1e-3, p_value
    # and the checkpoint's settings are still there for whoever uses the model after rto
    assert model.generation_config.repetition_penalty == 1.5 and model.generation_config.top_k == 5


def test_pad_token_is_neither_sampled_nor_scored(tiny_tokenizer):
    """The sampler never draws the pad token; the scorer leaves it out of the normalisation too, so both
    are the same distribution even when the model gives the pad token a third of its mass."""
    tok = tiny_tokenizer
    prompt = tok("The movie was", add_special_tokens=False)["input_ids"]
    model = make_tiny_gpt2(tok).eval()
    make_pad_likely(model, tok.pad_token_id)
    with torch.no_grad():
        full = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / T, -1)
    assert float(full[tok.pad_token_id]) > 0.2  # the pad token really is likely under the model
    boosted = sorted(set(prompt) | {tok.eos_token_id})
    _boost(model, boosted, 4.0)
    probs = _scored_first_token_probs(model, tok, prompt)
    assert abs(float(probs.sum()) - 1) < 1e-6  # the other tokens' scores make a whole distribution
    first = _sampled_first_tokens(model, tok, prompt)
    assert not bool((first == tok.pad_token_id).any())
    p_value = _chi_square_p_value(first, probs, boosted)
    assert p_value > 1e-3, p_value
