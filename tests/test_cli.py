"""The `rto` command line: help, YAML config + overrides, clear errors."""

import subprocess
import sys

import pytest
import yaml

from rto.cli import COMMANDS, main, parse_config, split_config_flag
from rto.config import DPOConfig, PPOConfig, SFTConfig, load_yaml_config
from rto.errors import ConfigError
from tests.trainers.helpers import read_metrics, sft_rows, write_jsonl


def test_help_lists_working_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "rm", "dpo", "ppo"):
        assert f"  {name}" in out
    assert set(COMMANDS) >= {"sft", "rm", "dpo", "ppo"}


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "rto.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: rto <command>" in out.stdout


def test_command_help_shows_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    out = capsys.readouterr().out
    assert "--reward-mode" in out and "How per-token rewards are built" in out


def test_unknown_command_suggests(capsys):
    assert main(["sfft"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": "d.jsonl", "learning_rate": 0.001, "beta": 0.2}))
    cfg = parse_config(
        DPOConfig, ["--config", str(path), "--beta", "0.3", "--output-dir", "o"], prog="rto dpo"
    )
    assert cfg.model == "m" and cfg.learning_rate == 0.001 and cfg.beta == 0.3 and cfg.output_dir == "o"
    assert split_config_flag(["--config=x.yaml", "--a", "1"]) == ("x.yaml", ["--a", "1"])


def test_yaml_unknown_field_names_it_and_suggests(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("reward_mod: rto\npolicy: p\n")
    with pytest.raises(ConfigError, match=r"unknown field 'reward_mod'.*did you mean 'reward_mode'"):
        load_yaml_config(PPOConfig, path)


def test_invalid_values_are_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"policy": "p", "prompts": "x", "output_dir": str(tmp_path / "o"), "beta1": -1.0})
    )
    assert main(["ppo", "--config", str(path)]) == 2
    assert "field 'beta1' must be >= 0" in capsys.readouterr().err


def test_sft_from_the_command_line(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = tmp_path / "out"
    code = main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "2", "--per-device-batch-size", "4", "--no-progress"])  # fmt: skip
    assert code == 0
    assert len(read_metrics(out)) == 2
    saved = yaml.safe_load((out / "rto_config.yaml").read_text())
    assert saved["stage"] == "SFTConfig" and saved["max_steps"] == 2
    # the saved config reproduces the run's config
    del saved["stage"]
    assert load_yaml_config(SFTConfig, _dump(tmp_path, saved)) == SFTConfig(**saved)


def _dump(tmp_path, data):
    p = tmp_path / "again.yaml"
    p.write_text(yaml.safe_dump(data))
    return p
