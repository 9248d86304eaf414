"""The reward model's centring penalty and per-token IPO, end to end: the trainers' first-step losses equal
the formulas computed from outside with the saved models and a naive loop over tokens."""

import pytest
import torch
import torch.nn.functional as F

from rto import models
from rto.config import DPOConfig, RewardConfig
from rto.data.formats import to_preference_examples
from rto.data.loading import load_rows
from rto.data.tokenize import tokenize_all, tokenize_preference
from rto.trainers.dpo import train_dpo
from rto.trainers.reward import preference_scores, train_reward
from tests.conftest import make_tiny_gpt2
from tests.trainers.helpers import preference_rows, read_metrics, write_jsonl

# A learning rate of 1e-30 leaves float32 weights as they were, so the saved model is the one the first
# step scored with.
ONE_STEP = dict(max_steps=1, per_device_batch_size=16, logging_steps=1, progress=False, warmup_ratio=0.0)


def _items(data, tok):
    examples = to_preference_examples(load_rows(str(data), "train", None), source=str(data))
    return tokenize_all(tokenize_preference, tok, examples, source=str(data), max_length=512)[0]


def test_reward_centering_is_trl_form(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16))
    cfg = RewardConfig(
        model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "rm"), learning_rate=1e-30,
        center_rewards_coefficient=0.5, **ONE_STEP,
    )  # fmt: skip
    out = train_reward(cfg)
    tok = models.load_tokenizer(str(out))
    model = models.load_score_model(str(out), tok).eval()
    with torch.no_grad():
        c, r = preference_scores(model, _items(data, tok), tok.pad_token_id, "cpu")
    expected = -F.logsigmoid(c - r).mean() + 0.5 * ((c + r) ** 2).mean()
    assert read_metrics(out)[0]["loss"] == pytest.approx(float(expected), rel=1e-6)


def _naive_logratio_sums(policy, ref, ids: list[int], completion_mask: list[int]) -> tuple[float, int]:
    """(sum over completion tokens of log pi - log pi_ref, number of completion tokens), token by token."""
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(policy(x).logits[0].double(), -1)
        lr = torch.log_softmax(ref(x).logits[0].double(), -1)
    total, n = 0.0, 0
    for t in range(1, len(ids)):
        if completion_mask[t]:
            total += float(lp[t - 1, ids[t]] - lr[t - 1, ids[t]])
            n += 1
    return total, n


@pytest.mark.parametrize("per_token", [True, False])
def test_ipo_first_loss_matches_the_formula(tmp_path, tiny_model_dir, tiny_tokenizer, per_token):
    """The reference is another model, so h != 0 at the first step and the two IPO forms differ."""
    ref_dir = tmp_path / "ref"
    make_tiny_gpt2(tiny_tokenizer, seed=1).save_pretrained(ref_dir)
    tiny_tokenizer.save_pretrained(ref_dir)
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(16))
    beta = 0.1
    cfg = DPOConfig(
        model=str(tiny_model_dir), ref_model=str(ref_dir), data=str(data), output_dir=str(tmp_path / "ipo"),
        loss_type="ipo", ipo_per_token=per_token, beta=beta, learning_rate=1e-30, **ONE_STEP,
    )  # fmt: skip
    first = read_metrics(train_dpo(cfg))[0]
    tok = models.load_tokenizer(str(tiny_model_dir))
    policy = models.load_causal_lm(str(tiny_model_dir), tok).eval()
    ref = models.load_causal_lm(str(ref_dir), tok).eval()
    losses = []
    for it in _items(data, tok):
        c, nc = _naive_logratio_sums(policy, ref, it["chosen_input_ids"], it["chosen_completion_mask"])
        r, nr = _naive_logratio_sums(policy, ref, it["rejected_input_ids"], it["rejected_completion_mask"])
        h = c / nc - r / nr if per_token else c - r
        losses.append((h - 1 / (2 * beta)) ** 2)
    assert first["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
