"""`rto bench --compare trl`: TRL's experimental PPO trainer timed on the bench's world and shapes (trl
<= 1.12 must be importable; it is not an rto dependency)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import time
from pathlib import Path
from typing import Any

TRL_MISSING = (
    "skipped --compare trl: the 'trl' package with its experimental PPO trainer is not importable here "
    "(it exists in trl <= 1.12.0; install it in a separate environment, it is not an rto dependency)"
)


def _trl_ppo():
    """(PPOConfig, PPOTrainer) from trl, or None when trl or its PPO trainer is absent."""
    if importlib.util.find_spec("trl") is None:
        return None
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for module in ("trl.experimental.ppo", "trl"):
        try:
            mod = importlib.import_module(module)
            return mod.PPOConfig, mod.PPOTrainer
        except (ImportError, AttributeError):
            continue
    return None


def compare_trl(cfg, root: Path, items: list[dict], ppo_iteration_s: float) -> dict[str, Any]:
    """Time TRL's PPO on the same world: same models, batch, mini-batch, response length and epochs."""
    found = _trl_ppo()
    if found is None:
        print(TRL_MISSING)
        return {"skipped": TRL_MISSING}
    TrlPPOConfig, TrlPPOTrainer = found
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    from rto import models

    tok = models.load_tokenizer(str(root / "sft"), padding_side="left")
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    n_updates = cfg.warmup_iterations + cfg.iterations
    B = cfg.rollout_batch_size
    args = TrlPPOConfig(
        output_dir=str(root / "out_trl"), per_device_train_batch_size=B,
        gradient_accumulation_steps=1, num_mini_batches=B // cfg.mini_batch_size,
        local_rollout_forward_batch_size=B, total_episodes=n_updates * B, response_length=cfg.max_new_tokens,
        num_ppo_epochs=cfg.ppo_epochs, stop_token="eos", temperature=1.0, learning_rate=5e-7, kl_coef=0.01,
        num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=10**6, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=cfg.seed, dataloader_drop_last=True,
    )  # fmt: skip
    dataset = Dataset.from_dict({"input_ids": [x["input_ids"] for x in items]})
    trainer = TrlPPOTrainer(
        args=args,
        processing_class=tok,
        model=AutoModelForCausalLM.from_pretrained(root / "sft"),
        ref_model=AutoModelForCausalLM.from_pretrained(root / "sft"),
        reward_model=AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1),
        train_dataset=dataset,
        callbacks=[Stamp()],
    )
    trainer.train()
    per_update = [b - a for a, b in zip(stamps, stamps[1:])][cfg.warmup_iterations :]
    if not per_update:
        return {"skipped": "trl ran no measured update", "trl_version": trl.__version__}
    trl_s = statistics.fmean(per_update)
    return {
        "trl_version": trl.__version__,
        "trl_iteration_s": trl_s,
        "trl_iteration_s_each": per_update,
        "rto_ppo_iteration_s": ppo_iteration_s,
        "rto_ppo_over_trl": ppo_iteration_s / trl_s,
        "note": "TRL's PPO (reward_mode=ppo equivalent) on the same models and shapes, run after the "
        "alternating measurement; TRL takes the policy log-probs from generate's logits (no policy "
        "scoring pass) and always samples with top_k=0.",
    }
