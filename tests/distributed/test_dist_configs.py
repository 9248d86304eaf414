"""The shipped accelerate config files parse as accelerate configs and say what they claim; PPO refuses,
with a reason, the back-ends it is not wired for. (Only DDP on CPU runs here: see test_dist_*.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from rto.errors import RtoError
from rto.trainers.ppo import check_distributed_support

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {
    "ddp.yaml": (DistributedType.MULTI_GPU, None),
    "ddp_cpu.yaml": (DistributedType.MULTI_GPU, None),  # accelerate only spawns processes on this path
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 3),
    "fsdp.yaml": (DistributedType.FSDP, None),
}


def test_every_config_file_is_expected():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_own_parser(name):
    cfg = load_config_from_file(str(CONFIGS / name))
    kind, zero_stage = EXPECTED[name]
    assert cfg.distributed_type == kind
    assert cfg.num_processes == 2 and cfg.num_machines == 1
    assert cfg.use_cpu is False
    if zero_stage is not None:
        assert cfg.deepspeed_config["zero_stage"] == zero_stage
    if kind == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_version"] == 2
    text = (CONFIGS / name).read_text()
    assert "accelerate launch --config_file configs/accelerate/" + name in text  # documents its launch line
    if kind in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        assert "UNTESTED" in text


def _acc(kind: DistributedType, zero_stage: int | None = None):
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU])
def test_ppo_accepts_single_process_and_ddp(kind):
    check_distributed_support(_acc(kind), with_critic=True)


def test_ppo_refuses_sharded_weights_and_two_deepspeed_models():
    with pytest.raises(RtoError, match="FSDP"):
        check_distributed_support(_acc(DistributedType.FSDP), with_critic=False)
    with pytest.raises(RtoError, match="ZeRO-3"):
        check_distributed_support(_acc(DistributedType.DEEPSPEED, 3), with_critic=False)
    with pytest.raises(RtoError, match="reinforce"):
        check_distributed_support(_acc(DistributedType.DEEPSPEED, 2), with_critic=True)
    check_distributed_support(_acc(DistributedType.DEEPSPEED, 2), with_critic=False)  # wired, untested
