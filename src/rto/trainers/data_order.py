"""The order in which examples are seen, and how a global batch is split over processes.

Data order is ours, not a DataLoader's: each epoch is a seeded permutation of example indices, cut into
*global* batches, and each process takes its contiguous share of every global batch. So the examples a
global step sees do not depend on the number of processes, and a resume only needs the step counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from accelerate import Accelerator

from rto.errors import RtoError


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(
    n: int, global_batch: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, list[int]]]:
    """Endless (step, indices) over seeded epochs, dropping the last incomplete batch of each epoch."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise RtoError(f"dataset has {n} examples, fewer than one global batch of {global_batch}")
    step = start_step
    while True:
        epoch, within = divmod(step, per_epoch)
        order = epoch_permutation(n, seed, epoch)
        yield step, order[within * global_batch : (within + 1) * global_batch]
        step += 1


def process_share(items: list, acc: Accelerator) -> list:
    """This process's contiguous slice of a global batch (sizes must divide evenly)."""
    n, k = len(items), acc.num_processes
    if n % k:
        raise RtoError(f"global batch of {n} does not split evenly over {k} processes")
    per = n // k
    return items[acc.process_index * per : (acc.process_index + 1) * per]


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def total_steps_for(n_examples: int, global_batch: int, num_epochs: float, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.floor(n_examples * num_epochs / global_batch))
