"""Bad input gives a clear error naming the file, field or value, never a deep traceback.

Data-file faults (missing file, malformed JSON lines, missing columns, empty fields, identical pairs,
bad roles, non-UTF-8, over-long examples, empty after filtering, tokenizer without EOS/pad/template)
are covered in tests/data; different tokenizers for policy and DPO model in
tests/trainers/test_ppo_e2e.py. This file covers configs, models and output folders."""

import errno
import json
import pathlib

import accelerate.checkpointing
import pytest
import torch
import yaml

from rto import jsonl
from rto.cli import main
from rto.config import DPOConfig, PPOConfig, SFTConfig, config_from_dict, load_yaml_config
from rto.errors import ConfigError, RtoError
from rto.trainers import checkpoints
from rto.trainers.ppo import train_ppo
from rto.trainers.sft import train_sft
from tests.conftest import make_tiny_gpt2
from tests.reliability.reliability_helpers import assert_same_run, build_world, read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    return build_world(tmp_path_factory.mktemp("world"), tiny_tokenizer)


def _sft(world, out, **kw):
    base = dict(model=str(world / "sft"), data=str(world / "sft.jsonl"), output_dir=str(out), max_steps=4,
                per_device_batch_size=4, learning_rate=1e-3, save_steps=2, save_total_limit=5, progress=False,
                max_length=48)  # fmt: skip
    return SFTConfig(**{**base, **kw})


def _ppo(world, out, **kw):
    base = dict(policy=str(world / "sft"), reward_model=str(world / "rm"), dpo_model=str(world / "dpo"),
                prompts=str(world / "prompts.jsonl"), output_dir=str(out), num_iterations=1,
                rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4, progress=False)  # fmt: skip
    return PPOConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- models


def test_reward_model_without_normalisation_stats(world, tmp_path):
    with pytest.raises(RtoError) as e:
        train_ppo(_ppo(world, tmp_path / "o", reward_model=str(world / "rm_nostats")))
    msg = str(e.value)
    assert msg.startswith(
        f"{world / 'rm_nostats'} has no score normalisation stats (rto_score_mean/rto_score_std"
    )
    assert "train it with `rto rm`" in msg and "--no-normalize-rm-score" in msg


def test_model_folder_with_only_pickle_weights_is_refused(world, tmp_path, tiny_tokenizer):
    folder = tmp_path / "pickled"
    model = make_tiny_gpt2(tiny_tokenizer, n_embd=16, n_layer=1)
    model.config.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(RtoError, match=r"holds only pickle weights \(pytorch_model\.bin\).*safetensors only"):
        train_sft(_sft(world, tmp_path / "o", model=str(folder)))


def test_damaged_safetensors_file(world, tmp_path, tiny_tokenizer):
    folder = tmp_path / "damaged"
    make_tiny_gpt2(tiny_tokenizer, n_embd=16, n_layer=1).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy that was cut short
    with pytest.raises(RtoError, match=rf"'{folder}'"):
        train_sft(_sft(world, tmp_path / "o", model=str(folder)))


def test_missing_model_folder(world, tmp_path):
    with pytest.raises(RtoError, match=r"--model: folder not found: .*/nope"):
        train_sft(_sft(world, tmp_path / "o", model=str(tmp_path / "nope")))


# ----------------------------------------------------------------------------- configs


def test_cli_mistyped_flag_is_named_with_the_closest_one(capsys):
    assert main(["sft", "--learning-rat", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option: --learning-rat (did you mean --learning-rate?)" in err


def test_cli_wrong_type_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ppo", "--policy", "p", "--prompts", "x", "--output-dir", "o", "--max-new-tokens", "many"])
    assert e.value.code == 2
    err = capsys.readouterr()
    assert "--max-new-tokens" in err.out + err.err


def test_yaml_values_are_checked_against_field_types(tmp_path):
    path = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-5 (no dot) as a string: accepted for a number field
    path.write_text("learning_rate: 1e-5\nmax_steps: 10.0\nmodel: m\n")
    cfg = load_yaml_config(SFTConfig, path)
    assert cfg.learning_rate == 1e-5 and cfg.max_steps == 10 and isinstance(cfg.max_steps, int)
    for text, message in [
        ("learning_rate: fast\n", r"run\.yaml: field 'learning_rate' must be a number; got 'fast' \(str\)"),
        ("max_steps: 2.5\n", r"field 'max_steps' must be an integer; got 2\.5"),
        ("lr_scheduler: cosin\n", r"field 'lr_scheduler' must be one of 'cosine', .*did you mean 'cosine'"),
        ("lora: maybe\n", r"field 'lora' must be true/false; got 'maybe'"),
        ("ref_model: [a, b]\n", r"field 'ref_model' must be a string or null; got \['a', 'b'\]"),
        (
            "learning_rat: 0.1\n",
            r"unknown field 'learning_rat' for DPOConfig \(did you mean 'learning_rate'\?\)",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_yaml_config(DPOConfig, path)


def test_yaml_error_through_the_cli_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": "d", "output_dir": "o", "beta": "strong"}))
    assert main(["dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"rto dpo: error: {path}: field 'beta' must be a number; got 'strong' (str)"


@pytest.mark.parametrize(
    "cls, values, message",
    [
        (DPOConfig, {"beta": -0.1}, r"field 'beta' must be > 0, got -0\.1"),
        (DPOConfig, {"beta": float("nan")}, r"field 'beta' must be a finite number, got nan"),
        (SFTConfig, {"learning_rate": float("inf")}, r"field 'learning_rate' must be a finite number"),
        (SFTConfig, {"per_device_batch_size": 0}, r"field 'per_device_batch_size' must be > 0, got 0"),
        (SFTConfig, {"warmup_ratio": 1.0}, r"field 'warmup_ratio' must be in \[0, 1\)"),
        (PPOConfig, {"max_new_tokens": 0}, r"field 'max_new_tokens' must be > 0, got 0"),
        (PPOConfig, {"rollout_batch_size": 6, "mini_batch_size": 4},
         r"field 'rollout_batch_size' \(6\) must be a multiple of 'mini_batch_size' \(4\)"),
        (PPOConfig, {"rollout_batch_size": 4, "mini_batch_size": 8},
         r"field 'rollout_batch_size' \(4\) must be a multiple of 'mini_batch_size' \(8\)"),
        (PPOConfig, {"rollout_batch_size": 6, "num_samples_per_prompt": 2, "mini_batch_size": 8},
         r"field 'rollout_batch_size' \(6\) x 'num_samples_per_prompt' \(2\) = 12 responses must be a multiple "
         r"of 'mini_batch_size' \(8\)"),
        (PPOConfig, {"advantage": "rloo"},
         r"advantage 'rloo' compares the responses sampled for each prompt: set field 'num_samples_per_prompt'"),
        (PPOConfig, {"num_samples_per_prompt": 0}, r"field 'num_samples_per_prompt' must be > 0, got 0"),
        (PPOConfig, {"kl_placement": "loss", "kl_estimator": "k1"}, r"field 'kl_estimator' k1 cannot be a loss term"),
        (PPOConfig, {"beta2": -0.01}, r"field 'beta2' must be >= 0"),
        (PPOConfig, {"gamma": 1.5}, r"field 'gamma' must be in \[0, 1\], got 1\.5"),
        (PPOConfig, {"temperature": 0.0}, r"field 'temperature' must be > 0"),
        (PPOConfig, {"adaptive_kl": True, "kl_target": 0.0}, r"field 'kl_target' must be > 0"),
        (PPOConfig, {"reward_mode": "semi-rto", "sentence_delimiters": ""}, r"needs field 'sentence_delimiters'"),
        (PPOConfig, {"adam_beta2": 1.0}, r"field 'adam_beta2' must be in \[0, 1\)"),
    ],
)  # fmt: skip
def test_invalid_numbers_name_the_field(cls, values, message):
    required = {"output_dir": "o", "model": "m", "data": "d", "policy": "p", "prompts": "x",
                "reward_model": "r", "dpo_model": "d"}  # fmt: skip
    base = {k: v for k, v in required.items() if k in {f for f in cls.__dataclass_fields__}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cls, {**base, **values}).validate()


def test_batch_larger_than_the_data(world, tmp_path):
    with pytest.raises(
        RtoError, match=r"sft: 32 examples after tokenization, fewer than one global batch .* = 64\)"
    ):
        train_sft(_sft(world, tmp_path / "o", per_device_batch_size=16, gradient_accumulation_steps=4))


def test_output_dir_must_not_be_an_input_model(world):
    with pytest.raises(ConfigError, match=r"field 'output_dir' is the folder of field 'model'"):
        _sft(world, world / "sft").validate()
    with pytest.raises(ConfigError, match=r"field 'output_dir' is the folder of field 'dpo_model'"):
        _ppo(world, str(world / "dpo") + "/").validate()


# ----------------------------------------------------------------------------- output folder and disk


def test_output_folder_that_cannot_be_created(world, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(RtoError, match=rf"output folder '{blocker}/out' is not writable: Not a directory"):
        train_sft(_sft(world, blocker / "out"))


def test_output_folder_without_write_permission(world, tmp_path, monkeypatch):
    """Simulated (the tests may run as root, which ignores permission bits)."""
    real = pathlib.Path.write_text

    def refuse(self, *args, **kwargs):
        if self.name == ".rto_write_test":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    with pytest.raises(RtoError, match=r"output folder '.*/ro' is not writable: Permission denied"):
        train_sft(_sft(world, tmp_path / "ro"))


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(world, tmp_path, monkeypatch):
    real_save = accelerate.checkpointing.save

    def disk_full(obj, path, *args, **kwargs):
        if ".tmp-step-00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", disk_full)
    out = tmp_path / "full"
    with pytest.raises(RtoError) as e:
        train_sft(_sft(world, out, max_steps=6))
    ckpt = out / "checkpoints"
    assert str(e.value) == (
        f"could not write checkpoint {ckpt / 'step-00000004'}: No space left on device; "
        f"the last complete checkpoint, {ckpt / 'step-00000002'}, is intact"
    )
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["step-00000002"]
    assert not list(ckpt.glob(".tmp-*"))  # the partial write is cleaned up
    # ... and loadable: with space again, --resume finishes exactly like an uninterrupted run
    monkeypatch.undo()
    train_sft(_sft(world, out, max_steps=6, resume=True))
    assert_same_run(train_sft(_sft(world, tmp_path / "reference", max_steps=6)), out)


# ----------------------------------------------------------------------------- resuming


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(world, tmp_path):
    out = tmp_path / "o"
    train_sft(_sft(world, out))
    with pytest.raises(
        RtoError, match=r"holds checkpoints of an earlier run \(newest: step-00000002\); pass --resume"
    ):
        train_sft(_sft(world, out))


def test_resume_problems_are_explained(world, tmp_path, caplog):
    out = tmp_path / "o"
    train_sft(_sft(world, out, max_steps=6, save_total_limit=1))  # checkpoints at 2 and 4, keep the last
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["step-00000004"]
    latest = out / "checkpoints" / "step-00000004"
    # changed settings are allowed but named
    with caplog.at_level("WARNING"):
        train_sft(_sft(world, out, max_steps=6, resume=True, learning_rate=2e-3))
    assert "resuming with changed settings (learning_rate: 0.001 -> 0.002)" in caplog.text
    # a checkpoint without its RNG state cannot continue exactly: refuse rather than diverge silently
    (latest / "random_states_0.pkl").unlink()
    with pytest.raises(RtoError, match=r"step-00000004: the random-number state could not be restored"):
        train_sft(_sft(world, out, max_steps=6, resume=True))
    (latest / "trainer_state.json").write_text('{"step": 4, "regis')
    with pytest.raises(RtoError, match=r"trainer_state\.json: unreadable .*delete this checkpoint"):
        train_sft(_sft(world, out, max_steps=6, resume=True))


def test_resume_without_a_checkpoint_starts_over_and_says_so(world, tmp_path, caplog):
    out = tmp_path / "o"
    with caplog.at_level("WARNING"):
        train_sft(_sft(world, out, resume=True, save_steps=0))
    assert "--resume: no complete checkpoint in" in caplog.text
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_torn_last_line_of_a_log_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert jsonl.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(RtoError, match=r"metrics\.jsonl:2: not valid JSON"):
        jsonl.read_jsonl(path)
    jsonl.truncate_jsonl(tmp_path / "absent.jsonl", "step", 1)  # nothing to do, no error
    assert jsonl.read_jsonl(tmp_path / "absent.jsonl", missing_ok=True) == []
    with pytest.raises(RtoError, match="absent.jsonl: file not found"):
        jsonl.read_jsonl(tmp_path / "absent.jsonl")


def test_identical_pairs_error_names_the_row_or_are_dropped_on_request(world, tmp_path, capsys):
    rows = [json.loads(line) for line in (world / "pref.jsonl").read_text().splitlines()]
    rows[3]["rejected"] = rows[3]["chosen"]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["rm", "--model", str(world / "sft"), "--data", str(data), "--max-steps", "1",
            "--per-device-batch-size", "4", "--no-progress"]  # fmt: skip
    assert main([*args, "--output-dir", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "prefs.jsonl: row 4" in err and "identical" in err and "--identical-pairs drop" in err
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--identical-pairs", "drop"]) == 0
    assert (tmp_path / "b" / "model.safetensors").is_file()


def test_a_folder_without_a_trained_score_head_is_not_a_reward_model(world, tmp_path):
    """An SFT folder as --reward-model would score with a random head; without normalisation nothing
    else would notice."""
    with pytest.raises(RtoError, match=r"has no trained score head \(score.weight not in its weights\)"):
        train_ppo(_ppo(world, tmp_path / "o", reward_model=str(world / "sft"), normalize_rm_score=False))
