"""The loop shared by the supervised stages (SFT, reward model, DPO).

Each stage supplies `loss_sums(model, micro_batch_items) -> (loss_sum, metric_sums)` and
`count(item) -> float` (tokens for SFT, examples for preference losses). The global step's loss is
sum(loss_sum) / global count over every micro-batch of every process, so the update is the same for any
split of the global batch into processes and accumulation steps (DDP averages gradients over
processes, hence the factor num_processes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rto import distributed, models
from rto.data.formats import ColumnMap
from rto.data.loading import load_rows
from rto.data.tokenize import tokenize_all
from rto.errors import NonFiniteError, RtoError
from rto.hub import check_config_sources
from rto.trainers import checkpoints, data_order, guards, metrics, optim, signals


@dataclass
class SupervisedStage:
    name: str
    loss_sums: Callable[[torch.nn.Module, list[dict]], tuple[torch.Tensor, dict[str, float]]]
    count: Callable[[dict], float]


def setup_stage(cfg, stage: str, to_examples, tokenize_fn):
    """What every supervised stage does first: validate, set up the accelerator and output folder, load the
    tokenizer, and read, convert and tokenize the data (reporting truncation). Returns
    (accelerator, output folder, tokenizer, tokenized items)."""
    cfg.validate()
    check_config_sources(cfg)
    acc = distributed.make_accelerator(cfg)
    out = checkpoints.prepare_output_dir(acc, cfg)
    metrics.init_trackers(acc, cfg, f"rto-{stage}")
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    rows = load_rows(cfg.data, cfg.split, cfg.data_subset)
    extra = {"identical": cfg.identical_pairs} if hasattr(cfg, "identical_pairs") else {}
    examples = to_examples(rows, ColumnMap.from_config(cfg), source=cfg.data, **extra)
    items, counts = tokenize_all(
        tokenize_fn, tokenizer, examples, source=cfg.data, max_length=cfg.max_length, overflow=cfg.overflow
    )
    metrics.report_counts(acc, stage, cfg.data, counts)
    return acc, out, tokenizer, items


def train_supervised(cfg, acc, model, items: list[dict], stage: SupervisedStage) -> dict[str, Any]:
    """Run the optimisation; returns {"steps": n, "history": [...]}. Model is trained in place."""
    global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
    total_steps = data_order.total_steps_for(len(items), global_batch, cfg.num_epochs, cfg.max_steps)
    if len(items) < global_batch:
        raise RtoError(
            f"{stage.name}: {len(items)} examples after tokenization, fewer than one global batch "
            f"({cfg.per_device_batch_size} per device x {cfg.gradient_accumulation_steps} accumulation x "
            f"{acc.num_processes} processes = {global_batch})"
        )
    if cfg.disable_dropout:
        models.disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = optim.make_optimizer(model.parameters(), cfg.learning_rate, cfg)
    scheduler = optim.make_scheduler(optimizer, cfg, total_steps)
    model, optimizer = distributed.prepare_trained(acc, model, optimizer, schedulers=[scheduler])

    start, skipped, guard = 0, 0, guards.SkipGuard(cfg)
    if cfg.resume:
        state = checkpoints.load_latest_checkpoint(acc, cfg.output_dir)
        if state is not None:
            start, skipped = state["step"], state.get("skipped_updates", 0)
    metrics_log = metrics.MetricsLog(acc, cfg.output_dir, resume_step=start if cfg.resume else None)
    bar = metrics.progress_bar(acc, cfg, total_steps, f"rto {stage.name}", initial=start)
    batches = data_order.global_batches(len(items), global_batch, cfg.seed, start_step=start)
    model.train()
    with signals.GracefulStop() as stop:
        for step, indices in batches:
            if step >= total_steps:
                break
            done = step + 1
            row = _train_step(
                cfg, acc, model, optimizer, scheduler, stage, [items[i] for i in indices], done, guard
            )
            if row is None:
                skipped += 1
            else:
                row["epoch"] = done * global_batch / len(items)
                if cfg.on_nonfinite == "skip":
                    row["skipped_updates"] = skipped
                if done % cfg.logging_steps == 0 or done == total_steps:
                    metrics_log.log(done, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            state = {"skipped_updates": skipped}
            if cfg.save_steps and done % cfg.save_steps == 0 and done < total_steps:
                checkpoints.save_checkpoint(acc, cfg.output_dir, done, state, cfg.save_total_limit)
            signals.pause_point("step", done)
            if done < total_steps:
                checkpoints.stop_if_requested(acc, stop, cfg.output_dir, done, state, cfg.save_total_limit)
    bar.close()
    model.eval()
    return {"steps": total_steps, "history": metrics_log.history, "model": model, "skipped_updates": skipped}


def _train_step(cfg, acc, model, optimizer, scheduler, stage, global_items, done, guard) -> dict | None:
    """One optimizer step on a global batch; returns its metrics, or None if the update was skipped
    (non-finite loss or gradient with on_nonfinite="skip")."""
    local = data_order.process_share(global_items, acc)
    micro = data_order.micro_batches(local, cfg.per_device_batch_size)
    global_count = float(distributed.global_sum(acc, [sum(stage.count(it) for it in local)])[0])
    sums: dict[str, float] = {}
    bad_loss = False
    for k, mb in enumerate(micro):
        with distributed.accumulation_step(acc, model, last=k == len(micro) - 1):
            loss_sum, metric_sums = stage.loss_sums(model, mb)
            loss = loss_sum / global_count * acc.num_processes
            if not bool(torch.isfinite(loss)):
                bad_loss = True
                if cfg.on_nonfinite == "stop":  # before backward: the weights and optimizer stay as they were
                    guard.skip(NonFiniteError(f"non-finite {stage.name} loss at step {done}"))
            # With "skip", a bad micro-batch still runs backward so that every process takes part in
            # the gradient all-reduce; the whole update is dropped below.
            acc.backward(loss)
        signals.pause_point("micro", done)
        sums["loss"] = sums.get("loss", 0.0) + float(loss_sum.detach())
        for key, v in metric_sums.items():
            sums[key] = sums.get(key, 0.0) + float(v)
    try:
        if cfg.on_nonfinite == "skip" and float(distributed.global_sum(acc, [float(bad_loss)])[0]) > 0:
            raise NonFiniteError(f"non-finite {stage.name} loss at step {done}")
        grad_norm = guards.clip_and_check_grads(acc, model, cfg.max_grad_norm, done, "model")
    except NonFiniteError as err:
        guard.skip(err)
        optimizer.zero_grad(set_to_none=True)
        return None
    guard.ok()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    keys = sorted(sums)
    totals = distributed.global_sum(acc, [sums[k] for k in keys])
    row = {k: float(v) / global_count for k, v in zip(keys, totals)}
    row.update(grad_norm=grad_norm, learning_rate=scheduler.get_last_lr()[0])
    return row
