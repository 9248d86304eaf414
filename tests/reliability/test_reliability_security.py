"""Security: weights only from safetensors, nothing unpickled from a checkpoint except through
torch.load(weights_only=True), trust_remote_code only when asked for, plug-ins imported only when named,
and a run writes only inside its output folder."""

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import rto
from rto.config import STAGE_CONFIGS, DPOConfig, PPOConfig, RewardConfig, SFTConfig
from rto.errors import RtoError
from rto.trainers import checkpoints
from rto.trainers.dpo import train_dpo
from rto.trainers.ppo import load_models, train_ppo
from rto.trainers.reward import train_reward
from rto.trainers.sft import train_sft
from tests.reliability.reliability_helpers import build_world

SRC = Path(rto.__file__).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    return build_world(tmp_path_factory.mktemp("world"), tiny_tokenizer)


def test_source_never_unpickles_or_trusts_remote_code_by_itself():
    """No pickle module, torch.load only with weights_only=True, no literal trust_remote_code=True."""
    passed_on = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), where
            if not isinstance(node, ast.Call):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and getattr(func.value, "id", "") == "torch"
            ):
                assert (
                    isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                ), where
            if "weights_only" in kw:
                assert not (
                    isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is False
                ), where
            if "trust_remote_code" in kw:
                value = kw["trust_remote_code"]
                assert not (isinstance(value, ast.Constant) and value.value is True), where
                passed_on += isinstance(value, ast.Name)
    assert passed_on >= 3  # rto.models passes the option on to tokenizer, model and config loaders


def test_trust_remote_code_is_off_by_default_in_every_stage():
    for name, cls in STAGE_CONFIGS.items():
        assert cls().trust_remote_code is False, name


@pytest.fixture
def loads(monkeypatch):
    """Record the keyword arguments of every Hugging Face from_pretrained call."""
    seen = []
    for cls in (AutoTokenizer, AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification):
        original = cls.from_pretrained

        def record(*args, _original=original, _cls=cls, **kwargs):
            seen.append((_cls.__name__, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    return seen


def test_every_load_of_every_stage_follows_the_option_and_reads_safetensors(world, tmp_path, loads):
    common_kw = dict(
        max_steps=1, per_device_batch_size=4, progress=False, max_length=48, trust_remote_code=True
    )
    sft, pref = str(world / "sft.jsonl"), str(world / "pref.jsonl")
    train_sft(SFTConfig(model=str(world / "sft"), data=sft, output_dir=str(tmp_path / "sft"), **common_kw))
    train_reward(
        RewardConfig(model=str(world / "sft"), data=pref, output_dir=str(tmp_path / "rm"), **common_kw)
    )
    train_dpo(DPOConfig(model=str(world / "sft"), ref_model=str(world / "sft"), data=pref,
                        output_dir=str(tmp_path / "dpo"), **common_kw))  # fmt: skip
    ppo = dict(policy=str(world / "sft"), ref_model=str(world / "sft"), dpo_model=str(world / "dpo"),
               reward_model=str(world / "rm"), critic=str(world / "rm"), prompts="p", output_dir="o")  # fmt: skip
    load_models(PPOConfig(**ppo, trust_remote_code=True))
    assert len(loads) >= 15
    for cls, kw in loads:
        assert kw.get("trust_remote_code") is True, (cls, kw)
        if cls.startswith("AutoModel"):
            assert kw.get("use_safetensors") is True, (cls, kw)
    loads.clear()
    load_models(PPOConfig(**ppo))
    assert loads and all(kw.get("trust_remote_code") is False for _, kw in loads)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl"])
def test_a_tampered_checkpoint_is_refused_and_never_executed(victim, world, tmp_path):
    out = tmp_path / "o"
    cfg = dict(model=str(world / "sft"), data=str(world / "sft.jsonl"), output_dir=str(out), max_steps=4,
               save_steps=2, per_device_batch_size=4, progress=False, max_length=48)  # fmt: skip
    train_sft(SFTConfig(**cfg))
    marker = tmp_path / "pwned"
    (out / "checkpoints" / "step-00000002" / victim).write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(RtoError, match=r"step-00000002"):
        train_sft(SFTConfig(**cfg, resume=True))
    assert not marker.exists()


def test_checkpoint_holds_every_piece_of_state_and_writes_stay_in_the_output_folder(
    world, tmp_path, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "out"
    train_ppo(PPOConfig(policy=str(world / "sft"), dpo_model=str(world / "dpo"), reward_model=str(world / "rm"),
                        prompts=str(world / "prompts.jsonl"), output_dir=str(out), num_iterations=2,
                        rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4, save_steps=1, adaptive_kl=True,
                        dump_rollouts=1, progress=False))  # fmt: skip
    new = set(tmp_path.rglob("*")) - before
    assert new and all(out in p.parents or p == out for p in new), sorted(map(str, new - {out}))
    assert not list(cwd.iterdir())
    ckpt = out / "checkpoints" / "step-00000001"
    # policy + critic weights, both optimizers, RNG, and our JSON state; nothing else is pickled
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "metrics.jsonl", "model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
        "random_states_0.pkl", "rto_config.yaml", "trainer_state.json",
    ]  # fmt: skip
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 1 and set(state["kl_controller"]) and state["rng_digest"]
    assert [s["last_epoch"] for s in state["registered_states"]] == [2, 2]  # actor and critic schedules
    # the RNG file holds plain data: it loads with weights_only=True (as accelerate loads it)
    from accelerate.utils import load

    rng = load(ckpt / "random_states_0.pkl")
    assert isinstance(rng["torch_manual_seed"], torch.Tensor) and "random_state" in rng


def test_a_plugin_gold_reward_is_imported_only_when_named(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "rto_test_plugin_gold.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef score(prompts, responses):\n    return [0.0] * len(responses)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import rto.cli  # noqa: F401
    import rto.tasks.gold as gold

    assert not marker.exists()
    fn = gold.load_gold_reward("rto_test_plugin_gold:score")
    assert marker.exists() and fn(["p"], ["r"]) == [0.0]


def test_checkpoint_listing_and_rotation_touch_only_step_folders(tmp_path):
    root = checkpoints.checkpoint_root(tmp_path)
    for name in ("step-00000002", "step-x", ".tmp-step-00000009", "notes"):
        (root / name).mkdir(parents=True)
        (root / name / checkpoints.STATE_FILE).write_text("{}")
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["step-00000002"]
