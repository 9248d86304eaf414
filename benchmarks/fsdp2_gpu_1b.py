"""A few RTO iterations of a ~1B-parameter model under FSDP2, bf16 mixed precision, on GPUs: peak GPU
memory and iteration time. Prepared for a GPU machine; on CPU use --size tiny to check the script.

    python benchmarks/fsdp2_gpu_1b.py --out /tmp/fsdp2_gpu_1b.json            # 1 GPU
    python benchmarks/fsdp2_gpu_1b.py --processes 2 --out /tmp/r.json         # 2 GPUs
    python benchmarks/fsdp2_gpu_1b.py --size tiny --processes 2 --out /tmp/r.json   # CPU check

The world is built offline: a BPE tokenizer trained on generated reviews (rto.tasks), and a Llama-style
model from config with random weights (--size 1b: 2048 wide, 22 layers, 32 heads with 4 key/value heads,
MLP 5632: about 0.97B parameters at this vocabulary), saved as the SFT model, as the DPO model (the SFT
weights moved a little) and as a reward model (the same body with a one-label head). `rto ppo
--reward-mode rto` (GAE critic started from the reward model) then runs through
`accelerate launch --config_file configs/accelerate/fsdp2.yaml` with --mixed-precision bf16: all five
models sharded (weights kept in float32, computed in bf16), 16 prompts of 16 tokens, 64 new tokens,
mini-batches of 8, 3 iterations.

Each process reports torch.cuda.max_memory_allocated / max_memory_reserved (the peak over the whole run:
loading, sampling, scoring, updates, the final gathered save), the bytes of weights + gradients +
optimizer states it holds (rto.distributed.local_state_bytes) and the trainer's per-iteration times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers, heads, kv heads, mlp
    "1b": (2048, 22, 32, 4, 5632),
    "tiny": (64, 2, 4, 2, 128),
}


def build_world(root: Path, size: str, n_prompts: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rto.models import SCORE_MEAN_KEY, SCORE_STD_KEY
    from rto.tasks.sentiment import generate_reviews
    from rto.tasks.tokenizer import train_bpe_tokenizer

    texts = generate_reviews(2000, seed=0)
    tok = train_bpe_tokenizer(texts, vocab_size=2048)
    hidden, layers, heads, kv, mlp = SIZES[size]
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=mlp, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    sft = LlamaForCausalLM(cfg)
    params = sum(p.numel() for p in sft.parameters())
    sft.save_pretrained(root / "sft")
    with torch.no_grad():  # the DPO model: the SFT model moved a little
        for p in sft.parameters():
            p.add_(0.002 * torch.randn_like(p))
    sft.save_pretrained(root / "dpo")
    del sft
    cfg.num_labels = 1
    rm = LlamaForSequenceClassification(cfg)
    setattr(rm.config, SCORE_MEAN_KEY, 0.0)
    setattr(rm.config, SCORE_STD_KEY, 1.0)
    rm.save_pretrained(root / "rm")
    del rm
    for name in ("sft", "dpo", "rm"):
        tok.save_pretrained(root / name)
    prompts = []
    for text in generate_reviews(4 * n_prompts, seed=1):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 16:
            prompts.append(tok.decode(ids[:16]))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"params_per_model": params, "vocab": len(tok), "n_prompts": len(prompts)}


def worker(spec_path: str) -> None:
    import torch
    from prepared_models import record_prepared_models

    from rto import distributed
    from rto.config import PPOConfig
    from rto.trainers.ppo import train_ppo

    spec = json.loads(Path(spec_path).read_text())
    held = record_prepared_models()
    t0 = time.perf_counter()
    train_ppo(PPOConfig(**spec["config"]))
    rank = int(os.environ.get("RANK", "0"))
    report = {
        "rank": rank,
        "run_s": time.perf_counter() - t0,
        "state_bytes": distributed.local_state_bytes(held["models"], held["optimizers"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available():
        report.update(
            device=torch.cuda.get_device_name(),
            max_memory_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            max_memory_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        )
    Path(spec["report"]).with_name(f"rank{rank}.json").write_text(json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1b", choices=sorted(SIZES))
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--out", help="JSON file for the results (required)")
    ap.add_argument("--keep", help="build the world in this folder and keep it (default: a temporary one)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not args.out:
        ap.error("--out is required")
    import torch

    on_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="rto-fsdp2-gpu-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        world = build_world(root, args.size, 16)
        build_s = time.perf_counter() - t0
        config = dict(
            policy=str(root / "sft"), reward_model=str(root / "rm"), dpo_model=str(root / "dpo"),
            prompts=str(root / "prompts.jsonl"), output_dir=str(root / "out"), reward_mode="rto",
            advantage="gae", rollout_batch_size=16, mini_batch_size=8, max_new_tokens=64,
            max_prompt_length=24, num_iterations=args.iterations, seed=0, progress=False, warmup_ratio=0.0,
            mixed_precision="bf16" if on_gpu else "no", actor_lr=1e-6, critic_lr=1e-6,
        )  # fmt: skip
        reports = root / "reports"
        reports.mkdir(exist_ok=True)
        spec = reports / "spec.json"
        spec.write_text(json.dumps({"config": config, "report": str(reports / "rank.json")}))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", str(args.processes),
               "--main_process_port", "29731", __file__, "--worker", str(spec)]  # fmt: skip
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if not on_gpu:
            env.setdefault("OMP_NUM_THREADS", "1")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-8000:], sep="\n")
            return 1
        ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(args.processes)]
        rows = [json.loads(x) for x in (root / "out" / "metrics.jsonl").read_text().splitlines()]
        result = {
            "size": args.size,
            "processes": args.processes,
            "world": world,
            "build_s": build_s,
            "launch_s": time.perf_counter() - t0,
            "mixed_precision": config["mixed_precision"],
            "iteration_s": [r["time_generate_s"] + r["time_score_s"] + r["time_train_s"] for r in rows],
            "ranks": ranks,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
