"""rto.distributed under layouts this machine cannot run (FSDP, ZeRO-3: GPU only) and under uneven work,
checked with a stand-in for one process of an N-process accelerator. The stand-in plays what accelerate
does there: each process's parameters hold only its slice of the weights and gradients, and the
collectives (the full state dict, the gradient norm) return what the whole group would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from rto import distributed, models
from rto.trainers import checkpoints, guards
from rto.trainers.reward import measure_score_stats


class StandInAccelerator:
    """What the code under test reads from an Accelerator, for process `rank` of `world`."""

    def __init__(self, rank=0, world=1, kind=DistributedType.NO, fsdp_version=2, state_dict=None, norm=None):
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.distributed_type = kind
        self.state = SimpleNamespace(
            fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version), deepspeed_plugin=None
        )
        self.device = torch.device("cpu")
        self.reduced: list[torch.Tensor] = []
        self._state_dict, self._norm = state_dict, norm
        self._models: list = []  # what older code read instead of distributed.trained_models

    def reduce(self, t, reduction="sum"):  # the test adds up the processes' contributions itself
        self.reduced.append(t.clone())
        return t

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model

    def get_state_dict(self, model):  # the gathered full weights
        return self._state_dict

    def clip_grad_norm_(self, params, max_norm):  # the norm of the whole gradient, over every slice
        return torch.tensor(self._norm)


# ----------------------------------------------------------------------------- the gradient norm


def test_the_unclipped_gradient_norm_is_the_global_one():
    """FSDP1: each process's gradients are its slice; with clipping off (max_grad_norm 0) the reported
    norm must still be the norm of the whole gradient, as it is with clipping on."""
    full = torch.arange(1.0, 9.0)
    shards = full[:4], full[4:]
    whole = float(torch.linalg.vector_norm(full))
    for rank, shard in enumerate(shards):
        model = torch.nn.Linear(4, 1, bias=False)
        model.weight.grad = shard.clone().view(1, 4)
        acc = StandInAccelerator(rank, 2, DistributedType.FSDP, fsdp_version=1, norm=whole)
        for max_norm in (0.0, 1.0):
            assert guards.clip_and_check_grads(acc, model, max_norm, 1, "model") == pytest.approx(whole)


def test_unclipped_norm_on_one_process_is_unchanged_and_leaves_gradients_alone():
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    model(torch.randn(4, 5)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    reference = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    norm = distributed.clip_grad_norm(Accelerator(cpu=True), model, 0.0)
    assert norm == pytest.approx(float(reference), rel=1e-6)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


# ----------------------------------------------------------------------------- even forwards


def test_even_micro_batches_give_every_process_the_same_number_of_batches():
    items = list(range(11))
    for size in (1, 2, 3, 4, 20):
        for world in (1, 2, 3, 4):
            shares = [
                distributed.even_micro_batches(StandInAccelerator(r, world), items, size)
                for r in range(world)
            ]
            assert len({len(s) for s in shares}) == 1, (size, world)
            real = sorted(i for s in shares for batch, ok in s if ok for i in batch)
            assert real == items  # every item once, in real batches only
            assert all(0 < len(batch) <= size for s in shares for batch, _ in s)


def _score_model(tokenizer, folder):
    from transformers import GPT2ForSequenceClassification

    from tests.conftest import make_tiny_gpt2

    make_tiny_gpt2(tokenizer).save_pretrained(folder)
    return GPT2ForSequenceClassification.from_pretrained(folder, num_labels=1)


def _pairs(tokenizer, n):
    from rto.data.tokenize import tokenize_preference
    from tests.trainers.helpers import preference_rows

    return [tokenize_preference(tokenizer, row, max_length=64) for row in preference_rows(n)]


def test_reward_score_stats_run_as_many_forwards_on_every_process(tiny_tokenizer, tmp_path):
    """5 pairs over 2 processes in batches of 2: shares of 3 and 2 pairs. Both processes must run 2
    forwards (the second process one stand-in batch), and the pooled statistics must equal one
    process's."""
    torch.manual_seed(0)
    model = _score_model(tiny_tokenizer, tmp_path / "rm")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    items = _pairs(tiny_tokenizer, 5)
    pad = tiny_tokenizer.pad_token_id
    one = measure_score_stats(StandInAccelerator(), model, items, pad, batch_size=2)
    forwards, sums = [], torch.zeros(3, dtype=torch.float64)
    for rank in range(2):
        acc = StandInAccelerator(rank, 2)
        calls.clear()
        measure_score_stats(acc, model, items, pad, batch_size=2)
        forwards.append(len(calls))
        sums += acc.reduced[-1]
    assert forwards == [2, 2]
    s, sq, n = sums.tolist()
    assert n == 10
    assert (s / n, max(sq / n - (s / n) ** 2, 0.0) ** 0.5) == pytest.approx(one, abs=1e-6)


# ----------------------------------------------------------------------------- saving sharded LoRA models


@pytest.mark.parametrize("task", ["CAUSAL_LM", "SEQ_CLS"])
def test_a_sharded_lora_model_is_saved_from_the_gathered_weights(tiny_tokenizer, tmp_path, task):
    """Under FSDP/ZeRO-3 a LoRA model's own parameters are this process's slices; the saved folder (the
    merged model and the adapter) must hold the gathered weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tests.conftest import make_tiny_gpt2

    torch.manual_seed(0)
    make_tiny_gpt2(tiny_tokenizer).save_pretrained(tmp_path / "base")
    auto = AutoModelForCausalLM if task == "CAUSAL_LM" else AutoModelForSequenceClassification
    kw = {} if task == "CAUSAL_LM" else {"num_labels": 1}
    base = auto.from_pretrained(tmp_path / "base", **kw)
    lora = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="all-linear")
    model = models.lora_wrap(base, lora, task_type=task)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter: merging it changes the weights
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # what this process holds: not the model
    # FSDP1's gather is accelerate's (the stand-in's get_state_dict); FSDP2's is torch's, run for real
    # in test_dist_fsdp2.py
    acc = StandInAccelerator(kind=DistributedType.FSDP, fsdp_version=1, state_dict=gathered)
    checkpoints.save_hf_folder(acc, model, tiny_tokenizer, tmp_path / "out")

    saved = auto.from_pretrained(tmp_path / "out").state_dict()
    for key, value in expected.items():
        assert torch.allclose(saved[key], value, atol=1e-6), key
    reloaded = PeftModel.from_pretrained(
        auto.from_pretrained(tmp_path / "base", **kw), tmp_path / "out" / "adapter"
    )
    adapter = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert adapter and all(torch.allclose(v, gathered[k], atol=1e-6) for k, v in adapter.items())


# ----------------------------------------------------------------------------- real sharded weights


def test_fsdp2_on_cpu_processes_uneven_score_stats_and_the_global_norm(tiny_tokenizer, tmp_path):
    """Two CPU processes holding FSDP2 shards of a reward model: the score statistics over 5 pairs
    (shares of 3 and 2 pairs, in batches of 2) finish, equal one process's, and the gradient norm each
    process reports with clipping off is the norm of the whole gradient. Before the processes ran as
    many forwards, the first process's extra forward waited for a weight gather the other never joined."""
    import json

    import torch.nn.functional as F

    from rto.data.tokenize import tokenize_preference
    from rto.trainers.reward import preference_scores

    from dist_launch import launch, one_thread, save, score_gpt2  # isort: skip
    from tests.trainers.helpers import preference_rows

    save(score_gpt2(tiny_tokenizer, seed=0), tiny_tokenizer, tmp_path / "rm")
    items = [tokenize_preference(tiny_tokenizer, row, max_length=64) for row in preference_rows(5)]
    for item in items:
        item.pop("truncated")
    (tmp_path / "items.json").write_text(json.dumps(items))
    ranks = launch(
        [], tmp_path / "launch", worker=Path(__file__).with_name("fsdp2_cpu_worker.py"), timeout=150,
        extra={"model": str(tmp_path / "rm"), "items": str(tmp_path / "items.json")},
    )  # fmt: skip

    with one_thread():
        tok = models.load_tokenizer(str(tmp_path / "rm"))
        model = models.load_score_model(str(tmp_path / "rm"), tok)
        models.disable_dropout(model)
        ref_stats = measure_score_stats(StandInAccelerator(), model, items, tok.pad_token_id, batch_size=2)
        model.train()
        chosen, rejected = preference_scores(model, items, tok.pad_token_id, torch.device("cpu"))
        (-F.logsigmoid(chosen - rejected).mean()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        ref_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    for r in ranks:
        assert r["processes"] == 2 and r["sharded"]
        assert (r["mean"], r["std"]) == pytest.approx(ref_stats, abs=1e-5)
        assert r["grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
