"""The scoring roles (rto.scoring) against plain per-row computations."""

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from rto import models
from rto.data.tokenize import encode_completion, encode_prompt
from rto.engines import Rollout, response_mask_from_ids
from rto.scoring import Critic, LogProbModel, RewardModel, score_texts
from rto.tasks.tokenizer import train_bpe_tokenizer
from tests.conftest import SAMPLE_TEXTS, make_tiny_gpt2


def _score_model(tok, seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=1,
                     pad_token_id=tok.pad_token_id)  # fmt: skip
    return GPT2ForSequenceClassification(cfg).eval()


def _rollout(tok, prompts, responses):
    """A left-padded prompt / right-padded response batch, as an engine returns it."""
    p_ids = [encode_prompt(tok, p) for p in prompts]
    r_ids = [encode_completion(tok, r) for r in responses]
    P, R = max(map(len, p_ids)), max(map(len, r_ids))
    prompt = torch.full((len(p_ids), P), tok.pad_token_id)
    pmask = torch.zeros((len(p_ids), P), dtype=torch.long)
    resp = torch.full((len(r_ids), R), tok.pad_token_id)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        prompt[i, P - len(p) :], pmask[i, P - len(p) :] = torch.tensor(p), 1
        resp[i, : len(r)] = torch.tensor(r)
    rmask, ended = response_mask_from_ids(resp, tok.eos_token_id)
    return Rollout(prompt, pmask, resp, rmask, ended), p_ids, r_ids


PROMPTS = ["The movie", "I hated the plot, it was"]
RESPONSES = [" was great and wonderful.", " boring"]


def test_logps_are_the_log_softmax_of_each_response_token(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer).eval()
    roll, p_ids, r_ids = _rollout(tiny_tokenizer, PROMPTS, RESPONSES)
    P = roll.prompt_ids.shape[1]
    lp = LogProbModel(model, temperature=0.7).logps(roll.input_ids, roll.attention_mask, P)
    assert lp.shape == roll.response_ids.shape
    for b, (p, r) in enumerate(zip(p_ids, r_ids)):
        seq = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(seq).logits[0] / 0.7
        for t, token in enumerate(r):  # naive: token t of the response, scored by the logits before it
            expected = torch.log_softmax(logits[len(p) - 1 + t], -1)[token]
            assert float(lp[b, t]) == pytest.approx(float(expected), abs=1e-4)


def test_critic_values_are_the_head_at_each_position_before_a_response_token(tiny_tokenizer):
    critic = _score_model(tiny_tokenizer, 0)
    roll, p_ids, r_ids = _rollout(tiny_tokenizer, PROMPTS, RESPONSES)
    v = Critic(critic).values(roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1])
    assert v.shape == roll.response_ids.shape
    for b, (p, r) in enumerate(zip(p_ids, r_ids)):
        with torch.no_grad():
            hidden = critic.transformer(torch.tensor([p + r])).last_hidden_state[0]
            head = critic.score(hidden).squeeze(-1)
        assert torch.allclose(v[b, : len(r)], head[len(p) - 1 : len(p) - 1 + len(r)], atol=1e-4)


def test_reward_model_on_the_policy_tokens_reads_the_last_token(tiny_tokenizer):
    rm = _score_model(tiny_tokenizer, 1)
    roll, p_ids, r_ids = _rollout(tiny_tokenizer, PROMPTS, RESPONSES)
    scores = RewardModel(rm).scores(roll.input_ids, roll.attention_mask, PROMPTS, roll)
    for b, (p, r) in enumerate(zip(p_ids, r_ids)):
        with torch.no_grad():
            alone = rm(torch.tensor([p + r])).logits[0, 0]
        assert float(scores[b]) == pytest.approx(float(alone), abs=1e-4)


def test_reward_model_with_its_own_tokenizer_rescoring_the_texts(tiny_tokenizer):
    other = train_bpe_tokenizer([t.upper() for t in SAMPLE_TEXTS] + SAMPLE_TEXTS, vocab_size=400)
    assert not models.same_vocabulary(tiny_tokenizer, other)
    rm_model = _score_model(other, 2)
    rm = RewardModel(rm_model, "own-tokenizer", tokenizer=other, policy_tokenizer=tiny_tokenizer)
    roll, _, _ = _rollout(tiny_tokenizer, PROMPTS, RESPONSES)
    roll.ended[1] = False  # the second response was cut off: no EOS is added for the RM
    scores = rm.scores(roll.input_ids, roll.attention_mask, PROMPTS, roll)
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        comp = encode_completion(other, r)
        if b == 1:
            comp = comp[:-1]
        with torch.no_grad():
            alone = rm_model(torch.tensor([encode_prompt(other, p) + comp])).logits[0, 0]
        assert float(scores[b]) == pytest.approx(float(alone), abs=1e-4)
    # whole texts, in batches of one or all together: the same scores
    a = rm.text_scores(PROMPTS, RESPONSES)
    b = score_texts(rm_model, other, PROMPTS, RESPONSES, batch_size=1)
    assert torch.allclose(a, b, atol=1e-5) and float(a[0]) == pytest.approx(float(scores[0]), abs=1e-5)


def test_unknown_reward_model_kind_is_refused():
    with pytest.raises(ValueError, match="unknown reward-model kind"):
        RewardModel(None, "remote")
