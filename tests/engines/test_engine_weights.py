"""The policy weights an engine loads: plain models as they are, LoRA models merged out of place."""

import copy

import pytest
import torch

from rto.engines.weights import causal_lm_config, hf_weights
from tests.conftest import make_tiny_gpt2


def test_plain_model_weights_are_its_checkpoint_tensors(tiny_tokenizer):
    model = make_tiny_gpt2(tiny_tokenizer)
    got = dict(hf_weights(model))
    saved = model.state_dict()
    assert set(got) == set(saved)  # the output layer tied to the input embedding included
    for k, v in saved.items():
        assert torch.equal(got[k], v)
    once = dict(hf_weights(model, tied=False))
    assert set(once) == set(saved) - {"lm_head.weight"}
    config = causal_lm_config(model)
    assert config.to_dict() == {**model.config.to_dict(), "architectures": ["GPT2LMHeadModel"]}
    assert model.config.architectures is None  # a copy: the model's own config is untouched


def test_lora_weights_equal_peft_merge_and_leave_the_model_untouched(tiny_tokenizer):
    peft = pytest.importorskip("peft")
    model = make_tiny_gpt2(tiny_tokenizer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    lora = peft.get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter a non-zero delta
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    got = dict(hf_weights(lora))
    merged = copy.deepcopy(lora).merge_and_unload()
    expected = merged.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
    assert sum(not torch.equal(got[k], original[k]) for k in got) == 2 * 4  # c_attn, c_proj, c_fc, mlp.c_proj
    for k, v in lora.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert causal_lm_config(lora).architectures == ["GPT2LMHeadModel"]
    # a logits check: the merged weights reproduce the adapter model's outputs
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    plain = make_tiny_gpt2(tiny_tokenizer).eval()
    plain.load_state_dict(got, strict=False)
    plain.tie_weights()
    torch.testing.assert_close(plain(ids).logits, lora.eval()(ids).logits, rtol=0, atol=1e-5)
