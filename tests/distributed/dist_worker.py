"""Run several rto stages one after the other inside one process group (torchrun or accelerate launch).

Usage: python -m torch.distributed.run --nproc_per_node N dist_worker.py PLAN.json

PLAN.json is {"report": folder, "watch": [folders], "runs": [{"stage": "sft"|"rm"|"dpo"|"ppo", "config": {...},
"interrupt_after_checkpoint": step (optional)}]}. A run with interrupt_after_checkpoint stops, in every
process, right after the checkpoint of that step is complete: an interrupted job, to be resumed by a later run.
A run with "argv" goes through the command line, `rto.cli.main(argv)`, as `-m rto.cli <stage> ...` would.
Importing torch and transformers costs seconds per process, so one launch serves many runs. They share one
process group: `finish()` destroys it only after the last run (re-creating a gloo group in the same process
is unreliable: ranks may read the previous group's stale addresses), and accelerate's cached
Accelerator/gradient state is reset between runs (its process state, the group, is kept).

Every process writes report/rank{i}.json: what accelerate saw (num_processes, process_index,
distributed type) for each run, and, for non-main processes, every file-system change it made under the
watched folders (recorded with an audit hook), so the test can check that only the main process writes.
With "keep_gathered": true in SPEC.json, the main process also keeps the whole weights each final model
folder was written from (report/gathered<i>.safetensors, listed under "gathered" in its report).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

WRITE_EVENTS = {
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "shutil.rmtree",
    "shutil.move",
    "os.truncate",
}


def watch_writes(folders: list[str], log: list) -> None:
    """Record file-system changes under `folders` (audit hooks see every Python-level open/rename/...)."""
    roots = tuple(str(Path(f).resolve()) for f in folders)

    def under(p) -> bool:
        try:
            return str(Path(os.fsdecode(p)).resolve()).startswith(roots)
        except (TypeError, ValueError, OSError):
            return False

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing and under(path):
                log.append(["open", os.fsdecode(path)])
        elif event in WRITE_EVENTS and args and under(args[0]):
            log.append([event, os.fsdecode(args[0])])

    sys.addaudithook(hook)
    # torch.save and safetensors write from C++, out of the audit hook's sight: record their calls.
    import safetensors.torch
    import torch

    def recorded(name, fn, path_arg):
        def wrapper(*args, **kwargs):
            path = args[path_arg] if len(args) > path_arg else kwargs.get("f", kwargs.get("filename"))
            if isinstance(path, str | os.PathLike) and under(path):
                log.append([name, os.fsdecode(path)])
            return fn(*args, **kwargs)

        return wrapper

    torch.save = recorded("torch.save", torch.save, 1)
    safetensors.torch.save_file = recorded("safetensors.save_file", safetensors.torch.save_file, 1)


def run_stage(stage: str, config: dict):
    from rto.config import STAGE_CONFIGS

    cfg = STAGE_CONFIGS[stage](**config)
    if stage == "sft":
        from rto.trainers.sft import train_sft as train
    elif stage == "rm":
        from rto.trainers.reward import train_reward as train
    elif stage == "dpo":
        from rto.trainers.dpo import train_dpo as train
    else:
        from rto.trainers.ppo import train_ppo as train
    return train(cfg)


class Interrupted(Exception):
    pass


def main(spec_path: str) -> None:
    started = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    report = Path(spec["report"])
    report.mkdir(parents=True, exist_ok=True)
    (report / f"pid{rank}").write_text(str(os.getpid()))  # so that the test can kill a stuck worker
    writes: list = []
    if rank != 0:
        watch_writes(spec.get("watch", []), writes)
    from accelerate.state import AcceleratorState, GradientState

    from rto import distributed
    from rto.trainers import checkpoints

    seen = []
    make_accelerator = distributed.make_accelerator

    def recording_make_accelerator(cfg):
        acc = make_accelerator(cfg)
        seen.append(
            {
                "output_dir": cfg.output_dir,
                "num_processes": acc.num_processes,
                "process_index": acc.process_index,
                "is_main_process": acc.is_main_process,
                "distributed_type": str(acc.distributed_type),
                "layout": distributed.layout_of(acc).name,
            }
        )
        return acc

    finish = distributed.finish
    last = len(spec["runs"]) - 1

    def finish_keeping_group(acc):  # finish() minus the group's destruction (end_training destroys it)
        acc.wait_for_everyone()
        for tracker in acc.trackers:
            tracker.finish()

    # The whole weights each final model folder is written from (rank 0 receives them), kept beside the
    # report so that a test can compare the folder with them.
    gathered: list = []
    full_state_dict, save_hf_folder = distributed.full_state_dict, checkpoints.save_hf_folder
    saving_to = [None]

    def recording_full_state_dict(acc, model):
        full = full_state_dict(acc, model)
        if full and rank == 0 and spec.get("keep_gathered"):
            from safetensors.torch import save_file

            path = report / f"gathered{len(gathered)}.safetensors"
            save_file({k: v.contiguous() for k, v in full.items()}, str(path))
            gathered.append({"folder": str(saving_to[0]), "file": str(path)})
        return full

    def recording_save_hf_folder(acc, model, tokenizer, folder, *args, **kwargs):
        saving_to[0] = folder
        return save_hf_folder(acc, model, tokenizer, folder, *args, **kwargs)

    distributed.full_state_dict = recording_full_state_dict
    checkpoints.save_hf_folder = recording_save_hf_folder
    save_checkpoint = checkpoints.save_checkpoint
    stop_at = [None]

    def save_then_maybe_stop(acc, output_dir, step, state, keep):
        path = save_checkpoint(acc, output_dir, step, state, keep)
        if step == stop_at[0]:
            raise Interrupted
        return path

    distributed.make_accelerator = recording_make_accelerator
    checkpoints.save_checkpoint = save_then_maybe_stop
    for i, run in enumerate(spec["runs"]):
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        distributed.finish = finish if i == last else finish_keeping_group
        stop_at[0] = run.get("interrupt_after_checkpoint")
        t0 = time.perf_counter()
        try:
            if "argv" in run:
                from rto.cli import main as cli_main

                if cli_main(run["argv"]) != 0:
                    raise SystemExit(f"rto {' '.join(run['argv'])} failed")
            else:
                run_stage(run["stage"], run["config"])
        except Interrupted:
            seen[-1]["interrupted_at"] = stop_at[0]
        seen[-1]["seconds"] = round(time.perf_counter() - t0, 2)
    import torch.distributed as dist

    if dist.is_initialized():  # the last run was interrupted before its finish()
        dist.barrier()
        time.sleep(0.2)  # as in distributed.finish: let gloo's threads release finished work first
        dist.destroy_process_group()
    (report / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "runs": seen,
                "writes": writes,
                "gathered": gathered,
                "seconds": round(time.perf_counter() - started, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
