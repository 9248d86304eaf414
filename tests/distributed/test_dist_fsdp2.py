"""FSDP2 on 2 CPU processes (gloo), launched with `accelerate launch --config_file
configs/accelerate/fsdp2.yaml`, against 1 process without sharding:

- PPO (`rto` and `ppo` reward modes with GAE, REINFORCE++ with the frozen models offloaded to CPU memory,
  and RTO with LoRA on a shared base): the same rollouts (response ids equal; log-probs, values, rewards,
  advantages within 1e-5), the same metrics and, after a few iterations, the same weights;
- SFT, reward model and DPO: the same losses, metrics and weights;
- a PPO run killed with SIGKILL between checkpoints and resumed ends exactly like an uninterrupted one;
- every final model folder loads in plain transformers and holds exactly the gathered weights;
- process 1 writes nothing but its own shards and random state.

Why 1e-5: the 2-process runs hold every weight, gradient and optimizer state as two shards, gather the
weights for each forward and reduce-scatter the gradients (the mean of the two processes' sums), while
1 process adds the same terms in one backward. Only the order of float32 additions differs: ~1e-7
relative per operation. AdamW moves a weight by at most about the learning rate (1e-3) per step, so after
these 3-12 steps weights differ by ~1e-7 (6e-8 seen), and a real fault (a gradient scaled by the number of
processes, a shard left out) moves them by ~1e-3. Sampled tokens are equal unless two noisy logits tie
within rounding. The same tolerance as the DDP tests (test_dist_ppo.py), for the same reasons; dropout is
off and the supervised stages use adam_eps=1e-4 (see test_dist_supervised.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_launch import (
    NEEDS_GLOO,
    assert_same_metrics,
    assert_same_rollouts,
    eos_prone_gpt2,
    launch,
    max_weight_diff,
    one_thread,
    read_rollouts,
    save,
    score_gpt2,
    weights,
)  # isort: skip

from tests.trainers.helpers import preference_rows, prompt_rows, read_metrics, sft_rows, write_jsonl

from dist_worker import run_stage  # isort: skip

pytestmark = NEEDS_GLOO

ATOL = 1e-5
PPO_RUNS = ("rto", "ppo", "rpp_offload", "lora")
SUPERVISED = ("sft", "rm", "dpo")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import make_tiny_gpt2

    root = tmp_path_factory.mktemp("dist_fsdp2")
    tok = tiny_tokenizer
    save(eos_prone_gpt2(tok, seed=0), tok, root / "sft_model")
    dpo = eos_prone_gpt2(tok, seed=0)
    with torch.no_grad():  # a DPO model: the SFT model moved a little
        for p in dpo.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save(dpo, tok, root / "dpo_model")
    save(score_gpt2(tok, seed=1, mean=0.1, std=2.0), tok, root / "rm_model")
    save(make_tiny_gpt2(tok, seed=0), tok, root / "base")
    write_jsonl(root / "prompts.jsonl", prompt_rows(32))
    data = {"sft": str(write_jsonl(root / "sft.jsonl", sft_rows(48)))}
    data["rm"] = data["dpo"] = str(write_jsonl(root / "pref.jsonl", preference_rows(48)))

    base = dict(
        policy=str(root / "sft_model"), reward_model=str(root / "rm_model"), dpo_model=str(root / "dpo_model"),
        prompts=str(root / "prompts.jsonl"), rollout_batch_size=8, mini_batch_size=4, max_new_tokens=8,
        actor_lr=1e-3, critic_lr=1e-3, warmup_ratio=0.0, progress=False, dump_rollouts=1, seed=3,
        per_device_micro_batch_size=1,
    )  # fmt: skip
    ppo = {
        # GAE critic, 2 PPO epochs (a shuffled second pass), adaptive KL, a checkpoint at iteration 2
        "rto": dict(base, reward_mode="rto", advantage="gae", num_iterations=3, ppo_epochs=2, adaptive_kl=True,
                    kl_target=0.01, kl_horizon=16, save_steps=2),
        "ppo": dict(base, reward_mode="ppo", advantage="gae", num_iterations=2),
        "rpp_offload": dict(base, reward_mode="rto", advantage="reinforce++", num_iterations=2,
                            offload_frozen_models=True),
        # the reference is the policy with adapters off, the critic an adapter on the reward model
        "lora": dict(base, reward_mode="rto", advantage="gae", num_iterations=2, lora=True, lora_r=4,
                     lora_alpha=8),
    }  # fmt: skip

    def supervised(stage, bs, accum, **kw):
        return dict(
            model=str(root / "base"), data=data[stage], per_device_batch_size=bs,
            gradient_accumulation_steps=accum, max_steps=3, learning_rate=3e-3, lr_scheduler="constant",
            warmup_ratio=0.0, disable_dropout=True, adam_eps=1e-4, logging_steps=1, progress=False, **kw,
        )  # fmt: skip

    two, one = root / "two", root / "one"
    jobs = [{"stage": "ppo", "config": dict(c, output_dir=str(two / n))} for n, c in ppo.items()]
    jobs += [
        {"stage": s, "config": supervised(s, 2, 2, output_dir=str(two / s), save_steps=2)} for s in SUPERVISED
    ]
    reports = launch(
        jobs, root / "launch", watch=[two], launcher="accelerate-fsdp2", extra={"keep_gathered": True}
    )
    # Killed with SIGKILL in iteration 3, after the checkpoint of iteration 2, then resumed.
    killed = dict(ppo["rto"], output_dir=str(two / "rto_killed"))
    paused = root / "paused"
    launch(
        [{"stage": "ppo", "config": killed}],
        root / "launch_killed",
        launcher="accelerate-fsdp2",
        env={"RTO_TEST_PAUSE": "rollout:3", "RTO_TEST_PAUSE_FILE": str(paused)},
        kill_when=paused,
    )
    assert not (two / "rto_killed" / "model.safetensors").exists()  # it really died before the end
    resumed_reports = launch(
        [{"stage": "ppo", "config": dict(killed, resume=True)}],
        root / "launch_resumed",
        launcher="accelerate-fsdp2",
    )
    with one_thread():  # 1 process holds the whole batch; no accumulation
        for name, c in ppo.items():
            run_stage("ppo", dict(c, output_dir=str(one / name), per_device_micro_batch_size=0, save_steps=0))
        for s in SUPERVISED:
            run_stage(s, supervised(s, 4, 2, output_dir=str(one / s)))
    return {"root": root, "one": one, "two": two, "reports": reports, "resumed": resumed_reports}


def test_every_run_was_sharded_over_two_processes(runs):
    for rank, report in enumerate(runs["reports"] + runs["resumed"]):
        for seen in report["runs"]:
            assert seen["layout"] == "fsdp2", seen
            assert (seen["num_processes"], seen["process_index"]) == (2, rank % 2)
            assert seen["distributed_type"] == "DistributedType.MULTI_CPU"
    # the checkpoint holds the two processes' shards, not accelerate's whole-model files
    ckpt = runs["two"] / "rto" / "checkpoints" / "step-00000002"
    files = {p.name for p in (ckpt / "sharded").iterdir()}
    assert len([f for f in files if f.startswith("shard-") and f.endswith(".safetensors")]) == 2
    assert not list(ckpt.glob("model*.safetensors"))


def test_processes_finished_sampling_at_different_steps(runs):
    """Each process's rows end at different steps (the EOS-prone policy), so a process kept stepping
    the sharded policy after its own rows had ended: synced generation was exercised."""
    rec = read_rollouts(runs["two"] / "rto")
    longest = [
        [max(len(rec[(it, s)]["response_ids"]) for s in half) for half in (range(4), range(4, 8))]
        for it in (1, 2, 3)
    ]
    assert any(a != b for a, b in longest), longest


@pytest.mark.parametrize("name", PPO_RUNS)
def test_ppo_matches_one_unsharded_process(runs, name):
    one, two = runs["one"] / name, runs["two"] / name
    assert_same_rollouts(read_rollouts(one), read_rollouts(two), ATOL)
    assert_same_metrics(read_metrics(one), read_metrics(two), ATOL)
    assert max_weight_diff(one, two) <= ATOL  # the policy (LoRA: merged)
    start = runs["root"] / "sft_model"
    assert max_weight_diff(start, two) > 1e-4  # it was really trained
    if name == "lora":
        for sub in (".", "critic"):
            a, b = (
                weights(runs[k] / name / sub / "adapter", "adapter_model.safetensors") for k in ("one", "two")
            )
            assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= ATOL
    elif name == "rpp_offload":
        assert not (two / "critic").exists()
    else:
        assert max_weight_diff(one / "critic", two / "critic") <= ATOL


@pytest.mark.parametrize("stage", SUPERVISED)
def test_supervised_stage_matches_one_unsharded_process(runs, stage):
    one, two = runs["one"] / stage, runs["two"] / stage
    a, b = read_metrics(one), read_metrics(two)
    assert len(a) == len(b) == 3 and a[-1]["loss"] < a[0]["loss"]
    for ra, rb in zip(a, b):  # every metric, the gradient norm included
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=ATOL, abs=ATOL), (stage, key)
    assert max_weight_diff(one, two) <= ATOL
    if stage == "rm":
        ca, cb = (json.loads((f / "config.json").read_text()) for f in (one, two))
        for key in ("rto_score_mean", "rto_score_std"):
            assert ca[key] == pytest.approx(cb[key], abs=ATOL)


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(runs):
    full, resumed = runs["two"] / "rto", runs["two"] / "rto_killed"
    assert [p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("step-")] == [
        "step-00000002"
    ]
    assert_same_rollouts(read_rollouts(full), read_rollouts(resumed), 0.0)
    assert_same_metrics(read_metrics(full), read_metrics(resumed), 0.0)
    for sub in (".", "critic"):
        a, b = weights(full / sub), weights(resumed / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_final_folders_load_in_plain_transformers_and_hold_the_gathered_weights(runs):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    gathered = runs["reports"][0]["gathered"]
    folders = {Path(g["folder"]).resolve(): g["file"] for g in gathered}
    two = runs["two"].resolve()
    expected = {two / n for n in ("rto", "ppo", "rpp_offload", "lora", *SUPERVISED)}
    expected |= {two / n / "critic" for n in ("rto", "ppo", "lora")}
    assert set(folders) == expected
    for folder, file in folders.items():
        full = weights(Path(file).parent, Path(file).name)
        if (folder / "adapter").is_dir():  # LoRA: the adapter is the gathered adapter weights
            adapter = weights(folder / "adapter", "adapter_model.safetensors")
            # peft names the trained adapter "default" in memory, not on disk; its own copy of the
            # critic's value head (modules_to_save) is saved under the head's plain name
            mine = {
                k.replace(".modules_to_save.default.", ".").replace(".default.", "."): v
                for k, v in full.items()
                if ".default." in k
            }
            assert adapter.keys() == mine.keys() and all(torch.equal(adapter[k], mine[k]) for k in adapter)
            continue
        auto = (
            AutoModelForCausalLM
            if folder.name in ("rto", "ppo", "rpp_offload", "sft", "dpo")
            else (AutoModelForSequenceClassification)
        )
        loaded = auto.from_pretrained(folder).state_dict()
        assert weights(folder).keys() == full.keys(), folder
        for k, v in full.items():
            assert torch.equal(loaded[k], v), (folder, k)


def test_only_the_main_process_writes_but_its_own_shards(runs):
    """Process 1 writes its shard of each checkpoint (sharded/shard-00002-...) and its random state,
    nothing else: every other file is written once, by process 0."""
    writes = runs["reports"][1]["writes"]
    assert writes
    for event, path in writes:
        p = Path(path)
        in_tmp = any(part.startswith(".tmp-step-") for part in p.parts)
        ok = in_tmp and (
            (event == "os.mkdir" and (p.name.startswith(".tmp-step-") or p.name == "sharded"))
            or p.name == "random_states_1.pkl"
            or (p.parent.name == "sharded" and p.name.startswith("shard-00002-"))
        )
        assert ok, (event, path)
    assert any(Path(p).name.startswith("shard-00002-") for _, p in writes)


WEIGHTS_WORKER = """
import json, os, sys
import torch
from torch.distributed.fsdp import fully_shard
from rto.engines.weights import hf_weights
from rto.errors import RtoError
from rto.models import lora_wrap
from transformers import AutoModelForCausalLM

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
whole = {name: t.clone() for name, t in hf_weights(model)}
lora = AutoModelForCausalLM.from_pretrained(sys.argv[1])
opts = type("O", (), dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="all-linear"))()
lora = lora_wrap(lora, opts)
for block in lora.get_base_model().transformer.h:
    fully_shard(block)
fully_shard(lora.get_base_model())
try:
    list(hf_weights(lora))
    refused = ""
except RtoError as e:
    refused = str(e)
if rank == 0:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in whole.items() if k != "lm_head.weight"}, sys.argv[2])
    with open(sys.argv[2] + ".json", "w") as f:
        json.dump({"names": list(whole), "refused": refused, "types": sorted({type(v).__name__ for v in whole.values()})}, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_engine_weight_export_gathers_whole_tensors_from_fsdp2_slices(tmp_path, tiny_tokenizer):
    """What a separate inference engine (vLLM) loads each iteration: under FSDP2 every tensor comes back
    whole (gathered from the 2 processes' slices) under its checkpoint name; a LoRA policy is refused with
    a reason instead of exporting slices."""
    import subprocess
    import sys

    from dist_launch import child_env, free_port

    save(eos_prone_gpt2(tiny_tokenizer, seed=0), tiny_tokenizer, tmp_path / "model")
    script = tmp_path / "weights_worker.py"
    script.write_text(WEIGHTS_WORKER)
    out = tmp_path / "whole.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path / "model"), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    info = json.loads(Path(str(out) + ".json").read_text())
    assert info["types"] == ["Tensor"]  # whole tensors, not slices
    assert "lm_head.weight" in info["names"]  # a tied weight under each of its names
    assert "LoRA" in info["refused"] and "--engine hf" in info["refused"]
    reference = weights(tmp_path / "model")
    got = weights(tmp_path, out.name)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)
