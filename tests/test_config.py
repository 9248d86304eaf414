"""The config dataclasses: shared groups, one validate() per config, help text hygiene."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap

import pytest

from rto.cli import COMMANDS, _load
from rto.config import (
    DPOConfig,
    GenerationOptions,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    load_yaml_config,
    save_config,
)
from rto.demo import DemoConfig, resolve
from rto.errors import ConfigError
from rto.eval import EvalConfig
from rto.label import LabelConfig


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_one_generation_group_for_every_sampling_command():
    group = _fields(GenerationOptions)
    assert group == {"engine", "max_new_tokens", "temperature", "top_p", "num_samples_per_prompt"}
    for cls in (PPOConfig, EvalConfig, LabelConfig, DemoConfig):
        assert issubclass(cls, GenerationOptions) and group <= _fields(cls)


def test_dead_options_are_gone():
    from rto.trainers.supervised import SupervisedStage

    assert not {"vf_coef", "eval_every"} & _fields(PPOConfig)
    assert "extra_models" not in _fields(SupervisedStage)


def test_columns_are_those_of_the_stage():
    assert {"chosen_column", "rejected_column"} & _fields(SFTConfig) == set()
    assert {"completion_column", "text_column", "chosen_column"} & _fields(PPOConfig) == set()
    assert {"completion_column", "text_column", "messages_column"} & _fields(DPOConfig) == set()
    assert {"prompt_column", "chosen_column", "rejected_column"} <= _fields(RewardConfig)


@pytest.mark.parametrize(
    "cfg, names",
    [
        (SFTConfig(), ["--model", "--data", "--output-dir"]),
        (PPOConfig(), ["--policy", "--prompts", "--output-dir", "--dpo-model", "--reward-model"]),
        (PPOConfig(reward_mode="dpo-only"), ["--policy", "--prompts", "--output-dir", "--dpo-model"]),
        (EvalConfig(), ["--policies", "--prompts", "--ref-model", "--out"]),
        (LabelConfig(), ["--prompts", "--policy", "--out"]),
    ],
)
def test_validate_names_every_missing_field_at_once(cfg, names):
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    (line,) = [x for x in str(e.value).splitlines() if "required fields missing" in x]
    assert re.findall(r"--[a-z-]+", line) == names


def test_validate_lists_every_problem():
    cfg = PPOConfig(policy="p", prompts="x", output_dir="o", reward_model="r", dpo_model="d", beta1=-1.0,
                    top_p=1.5, rollout_batch_size=6, mini_batch_size=4)  # fmt: skip
    with pytest.raises(ConfigError, match=r"3 problems") as e:
        cfg.validate()
    assert "'beta1'" in str(e.value) and "'top_p'" in str(e.value) and "'rollout_batch_size'" in str(e.value)
    with pytest.raises(
        ConfigError, match=r"'mini_batch_size' \(16\) must be divisible by the number of processes \(3\)"
    ):
        PPOConfig(policy="p", prompts="x", output_dir="o", reward_model="r", dpo_model="d").validate(
            num_processes=3
        )


def test_label_samples_come_in_pairs():
    with pytest.raises(ConfigError, match=r"'num_samples_per_prompt' must be even"):
        LabelConfig(prompts="p", policy="m", out="o.jsonl", num_samples_per_prompt=3).validate()
    LabelConfig(prompts="p", policy="m", out="o.jsonl", num_samples_per_prompt=4).validate()


def test_demo_checks_its_ppo_fields_through_the_ppo_config():
    with pytest.raises(ConfigError, match=r"field 'top_p' must be in \(0, 1\]"):
        resolve(DemoConfig(preset="test", out="x", top_p=2.0))
    with pytest.raises(ConfigError, match=r"field 'beta2' must be >= 0"):
        resolve(DemoConfig(preset="test", out="x", beta2=-1.0))


def test_default_betas_are_the_measured_safe_ones_and_beta1_above_beta2_warns():
    cfg = PPOConfig()
    assert cfg.beta1 <= cfg.beta2 and cfg.warnings() == []
    paper = PPOConfig(beta2=0.01)  # the paper's values are one flag away
    assert (paper.beta1, paper.beta2, paper.beta3) == (0.05, 0.01, 1.0)
    (warning,) = paper.warnings()
    assert "docs/experiments.md" in warning and "collapsed" in warning
    assert PPOConfig(beta2=0.01, dpo_reward_clip=0.05).warnings() == []
    assert PPOConfig(beta2=0.01, reward_mode="ppo").warnings() == []  # beta1 unused


def test_saved_config_reads_back_and_other_stages_are_named(tmp_path):
    cfg = DPOConfig(model="m", data="d.jsonl", output_dir=str(tmp_path), beta=0.2)
    path = save_config(cfg, tmp_path)
    assert load_yaml_config(DPOConfig, path) == cfg
    with pytest.raises(ConfigError, match=r"this is a config of `rto dpo` \(stage: dpo\), not of `rto ppo`"):
        load_yaml_config(PPOConfig, path)
    old = tmp_path / "old.yaml"  # written before the stage key named the command
    old.write_text(path.read_text().replace("stage: dpo", "stage: DPOConfig"))
    assert load_yaml_config(DPOConfig, old) == cfg


def _field_docstrings(cls):
    for klass in cls.__mro__:
        if klass.__module__ == "builtins" or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                yield klass.__name__, a.target.id, b.value.value


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_docstrings_are_one_line(command):
    """tyro prints a field docstring's line breaks as they are: each docstring is one line."""
    cls = _load(COMMANDS[command].config)
    docs = list(_field_docstrings(cls))
    assert docs
    for klass, name, doc in docs:
        assert "\n" not in doc, f"{klass}.{name}: docstring spans lines"
        assert "(required)" not in doc, f"{klass}.{name}: --help marks required fields itself"


def test_sentence_delimiters_read_escapes():
    assert PPOConfig().delimiters() == ".!?\n"
    assert PPOConfig(sentence_delimiters=";\\t").delimiters() == ";\t"


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "ppo", "demo", "eval", "label", "bench"])
def test_every_stage_takes_threads(command):
    assert "threads" in _fields(_load(COMMANDS[command].config))


def test_threads_reach_torch(monkeypatch):
    import torch

    from rto import distributed

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    distributed.make_accelerator(SFTConfig(output_dir="o", threads=1))
    assert seen == [1]
