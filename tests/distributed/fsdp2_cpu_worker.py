"""Sharded weights on CPU processes: torch's FSDP2 (`fully_shard`) over gloo, applied by hand because
accelerate only sets FSDP up on GPUs. Every forward of such a model is a collective (the layers gather
their weights), which is what makes uneven work between processes hang.

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp2_cpu_worker.py SPEC.json

SPEC.json: {"report": folder, "model": score-model folder, "items": tokenized preference pairs (JSON file)}.
Each process writes report/rank{i}.json: the reward model's score statistics (rto.trainers.reward) and
the gradient norm rto reports with clipping off, for a loss over the same pairs on every process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    report = Path(spec["report"])
    report.mkdir(parents=True, exist_ok=True)
    (report / f"pid{rank}").write_text(str(os.getpid()))  # so that the test can kill a stuck worker

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from torch.distributed.fsdp import fully_shard

    from rto import distributed, models
    from rto.trainers.reward import measure_score_stats, preference_scores

    acc = Accelerator(cpu=True)
    tok = models.load_tokenizer(spec["model"])
    model = models.load_score_model(spec["model"], tok)
    models.disable_dropout(model)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    items = json.loads(Path(spec["items"]).read_text())
    mean, std = measure_score_stats(acc, model, items, tok.pad_token_id, batch_size=2)

    model.train()
    chosen, rejected = preference_scores(model, items, tok.pad_token_id, acc.device)
    (-F.logsigmoid(chosen - rejected).mean()).backward()
    norm = distributed.clip_grad_norm(acc, model, 0.0)
    sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
    (report / f"rank{rank}.json").write_text(
        json.dumps(
            {"mean": mean, "std": std, "grad_norm": norm, "sharded": sharded, "processes": acc.num_processes}
        )
    )
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
