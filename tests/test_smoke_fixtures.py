from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_roundtrip(tiny_model_dir, tiny_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("The movie was great", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tiny_tokenizer)
    assert tok.pad_token_id != tok.eos_token_id


def test_chat_template(tiny_chat_tokenizer):
    text = tiny_chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|user|>hi<|eos|><|assistant|>"
