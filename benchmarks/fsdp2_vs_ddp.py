"""FSDP2 against DDP for `rto ppo --reward-mode rto` (GAE critic) on 2 CPU processes: per-process bytes of
model weights + gradients + optimizer states (all five models), whole-process peak RSS, and iteration time.

    python benchmarks/fsdp2_vs_ddp.py                      # medium preset, 4 iterations (1 warm-up)
    python benchmarks/fsdp2_vs_ddp.py --model-size small --iterations 3 --out /tmp/r.json

The world is the bench's (rto.bench.build_world): a BPE tokenizer trained on generated reviews and SFT,
DPO and reward-model folders of one GPT-2 preset with random weights (medium: 384 wide, 8 layers, about
14.7M parameters per model), prompts of 16 tokens. Each layout runs the real trainer through
`accelerate launch --config_file configs/accelerate/{ddp_cpu,fsdp2}.yaml` with 2 processes and one thread
each, the bench's shapes (32 prompts, 48 new tokens, mini-batches of 16).

What each process reports (this script's --worker mode runs the trainer): the bytes it holds of
  weights    every parameter and buffer of policy, critic, reference, DPO and reward model (its shard
             under FSDP2);
  gradients  one per trainable parameter (its shard): the size they take while they exist;
  optimizer  AdamW's states (step, exp_avg, exp_avg_sq) after the last update;
read from the models and optimizers `rto.distributed.prepare_trained/prepare_frozen` returned
(rto.distributed.local_state_bytes), after training. Activations, the weights a running forward gathers,
DDP's gradient buckets and the Python/torch runtime are not in it; they are in the peak RSS
(ru_maxrss of each worker process, whole process). Iteration time is the trainer's own per-iteration
timing (generate + score + train, metrics.jsonl), the warm-up iteration dropped, median of the rest.
One run per layout, run one after the other; the load average is printed next to the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ddp": "ddp_cpu.yaml", "fsdp2": "fsdp2.yaml"}


def worker(spec_path: str) -> None:
    """One process of one layout's run: train, then report this process's state bytes and peak RSS."""
    import torch
    from prepared_models import record_prepared_models

    from rto import distributed
    from rto.config import PPOConfig
    from rto.trainers.ppo import train_ppo

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    held = record_prepared_models()
    train_ppo(PPOConfig(**spec["config"]))
    rank = int(os.environ.get("RANK", "0"))
    state = distributed.local_state_bytes(held["models"], held["optimizers"])
    report = {
        "rank": rank,
        "state_bytes": state,
        "n_models": len(held["models"]),
        "n_optimizers": len(held["optimizers"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(spec["report"]).with_name(f"rank{rank}.json").write_text(json.dumps(report))


def run_layout(layout: str, world: dict, root: Path, bench, iterations: int, port: int) -> dict:
    out = root / f"out_{layout}"
    config = dict(
        policy=str(root / "sft"), reward_model=str(root / "rm"), dpo_model=str(root / "dpo"),
        prompts=str(root / "prompts.jsonl"), output_dir=str(out), reward_mode="rto", advantage="gae",
        rollout_batch_size=bench.rollout_batch_size, mini_batch_size=bench.mini_batch_size,
        max_new_tokens=bench.max_new_tokens, max_prompt_length=bench.prompt_length + 8,
        num_iterations=iterations, seed=0, progress=False, warmup_ratio=0.0,
    )  # fmt: skip
    reports = root / f"reports_{layout}"
    reports.mkdir()
    spec = reports / "spec.json"
    spec.write_text(json.dumps({"config": config, "report": str(reports / "rank.json")}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / CONFIGS[layout]), "--num_processes", "2",
           "--main_process_port", str(port), __file__, "--worker", str(spec)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{layout} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_generate_s"] + r["time_score_s"] + r["time_train_s"] for r in rows]
    return {
        "ranks": ranks,
        "iteration_s": times,
        "iteration_s_median_after_warmup": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-size", default="medium", choices=["micro", "tiny", "small", "medium"])
    ap.add_argument("--iterations", type=int, default=4, help="PPO iterations per layout (first = warm-up)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fsdp2_vs_ddp.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    from rto.bench import BenchConfig, build_world

    bench = BenchConfig(model_size=args.model_size)
    result: dict = {"model_size": args.model_size, "processes": 2, "threads_per_process": 1}
    with tempfile.TemporaryDirectory(prefix="rto-fsdp2-bench-") as tmp:
        root = Path(tmp)
        world = build_world(bench, root)
        result["params_per_model"] = world["params"]
        for i, layout in enumerate(("ddp", "fsdp2")):
            result[layout] = run_layout(layout, world, root, bench, args.iterations, 29700 + i)
    ddp, fsdp = result["ddp"], result["fsdp2"]
    state = {k: [r["state_bytes"]["total"] for r in result[k]["ranks"]] for k in ("ddp", "fsdp2")}
    result["ratios"] = {
        "state_bytes_fsdp2_over_ddp": max(state["fsdp2"]) / max(state["ddp"]),
        "peak_rss_fsdp2_over_ddp": max(r["peak_rss_mb"] for r in fsdp["ranks"])
        / max(r["peak_rss_mb"] for r in ddp["ranks"]),
        "iteration_time_fsdp2_over_ddp": fsdp["iteration_s_median_after_warmup"]
        / ddp["iteration_s_median_after_warmup"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    mb = 2**20
    print(
        f"{args.model_size}: {result['params_per_model'] / 1e6:.1f}M parameters per model, 5 models, 2 processes"
    )
    for k in ("ddp", "fsdp2"):
        r = result[k]
        parts = r["ranks"][0]["state_bytes"]
        print(
            f"{k:6s} state/process {max(state[k]) / mb:7.1f} MiB (weights {parts['weights'] / mb:.1f}, "
            f"grads {parts['grads'] / mb:.1f}, optimizer {parts['optimizer'] / mb:.1f}); peak RSS "
            f"{max(x['peak_rss_mb'] for x in r['ranks']):.0f} MiB; iteration {r['iteration_s_median_after_warmup']:.2f} s "
            f"(load {r['load_before']:.1f} -> {r['load_after']:.1f})"
        )
    print("FSDP2 / DDP:", ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    print("written:", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
