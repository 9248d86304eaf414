"""The shipped accelerate config files parse as accelerate configs and say what they claim; PPO refuses,
with a reason, the layouts it is not wired for. (DDP and FSDP2 on CPU processes run in test_dist_*.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from rto.distributed import LAYOUTS, layout_of, require_support
from rto.errors import RtoError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {
    "ddp.yaml": (DistributedType.MULTI_GPU, None),
    "ddp_cpu.yaml": (DistributedType.MULTI_GPU, None),  # accelerate only spawns processes on this path
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 3),
    "fsdp2.yaml": (DistributedType.FSDP, None),
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
    if kind == DistributedType.DEEPSPEED:
        assert "UNTESTED" in text
    if kind == DistributedType.FSDP:  # the one the FSDP2 tests launch through
        assert "tests/distributed/test_dist_fsdp2.py" in text


def _acc(kind: DistributedType, zero_stage: int | None = None, fsdp_version: int = 2):
    return SimpleNamespace(
        distributed_type=kind,
        state=SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage) if zero_stage else None,
            fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
        ),
    )


def test_fsdp_on_cpu_processes_is_read_from_the_launchers_environment(monkeypatch):
    """On CPU processes accelerate stays MULTI_CPU under an FSDP config file; rto reads the environment
    `accelerate launch` sets from it (ACCELERATE_USE_FSDP, FSDP_VERSION)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert layout_of(_acc(DistributedType.MULTI_CPU)) is LAYOUTS["fsdp2"]
    assert layout_of(_acc(DistributedType.NO)) is LAYOUTS["single"]  # one process: nothing to shard over
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert layout_of(_acc(DistributedType.MULTI_CPU)) is LAYOUTS["fsdp1"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert layout_of(_acc(DistributedType.MULTI_CPU)) is LAYOUTS["ddp"]


def test_every_layout_maps_to_a_row_of_the_table():
    cases = {
        (DistributedType.NO, None, 2): "single",
        (DistributedType.MULTI_CPU, None, 2): "ddp",
        (DistributedType.MULTI_GPU, None, 2): "ddp",
        (DistributedType.DEEPSPEED, 2, 2): "deepspeed-zero2",
        (DistributedType.DEEPSPEED, 3, 2): "deepspeed-zero3",
        (DistributedType.FSDP, None, 1): "fsdp1",
        (DistributedType.FSDP, None, 2): "fsdp2",
    }
    for args, name in cases.items():
        assert layout_of(_acc(*args)) is LAYOUTS[name]
    assert set(LAYOUTS) == set(cases.values())
    sharded = {name for name, layout in LAYOUTS.items() if layout.shards_weights}
    assert sharded == {"deepspeed-zero3", "fsdp1", "fsdp2"}


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU])
def test_ppo_accepts_single_process_and_ddp(kind):
    require_support(_acc(kind), "ppo", with_critic=True)


def test_ppo_runs_under_fsdp2_and_refuses_fsdp1_zero3_and_two_deepspeed_models():
    require_support(_acc(DistributedType.FSDP), "ppo", with_critic=True)
    with pytest.raises(RtoError, match="fsdp_version: 2"):
        require_support(_acc(DistributedType.FSDP, fsdp_version=1), "ppo", with_critic=False)
    with pytest.raises(RtoError, match="ZeRO-3.*FSDP2.*fsdp2.yaml"):
        require_support(_acc(DistributedType.DEEPSPEED, 3), "ppo", with_critic=False)
    with pytest.raises(RtoError, match="reinforce"):
        require_support(_acc(DistributedType.DEEPSPEED, 2), "ppo", with_critic=True)
    require_support(_acc(DistributedType.DEEPSPEED, 2), "ppo", with_critic=False)  # wired, untested


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_supervised_stages_run_under_every_layout(kind):
    for stage in ("sft", "rm", "dpo"):
        require_support(_acc(kind, 3 if kind == DistributedType.DEEPSPEED else None), stage)
