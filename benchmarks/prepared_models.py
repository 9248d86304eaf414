"""Shared by the FSDP2 benchmarks' worker processes: record every model and optimizer the trainer prepares."""

from __future__ import annotations


def record_prepared_models() -> dict[str, list]:
    """Wrap ``rto.distributed.prepare_trained`` and ``prepare_frozen`` so that every model and optimizer they
    return is kept in the returned dict ("models", "optimizers"), which fills as ``train_ppo`` sets up."""
    import torch

    from rto import distributed

    held: dict[str, list] = {"models": [], "optimizers": []}

    def recording(fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            for obj in out if isinstance(out, tuple) else (out,):
                if isinstance(obj, torch.nn.Module):
                    held["models"].append(obj)
                elif isinstance(obj, torch.optim.Optimizer):
                    held["optimizers"].append(obj)
            return out

        return wrapper

    distributed.prepare_trained = recording(distributed.prepare_trained)
    distributed.prepare_frozen = recording(distributed.prepare_frozen)
    return held
