"""Cells of another experiment folder are reused where their settings coincide and the world is the same
(`rto experiment --reuse-from`), and computed where not."""

import json
from pathlib import Path

import pytest

from rto.errors import ConfigError
from rto.experiments.cells import cell_dir, cell_hash, computed_log, run_cells, world_fingerprint
from rto.experiments.run import ExperimentConfig, adopt_world, resolve, same_world

FUNC = "tests.experiments.test_cells_reuse:toy_cell"


def toy_cell(spec: dict, folder: Path) -> dict:
    (folder / "model.txt").write_text(f"weights of {spec['x']}")
    return {"y": spec["x"] * 2}


def fake_world(out: Path, labels: str = "a") -> None:
    world = out / "world"
    (world / "data" / "labels").mkdir(parents=True)
    (world / "sft").mkdir()
    (world / "data" / "prompts_train.jsonl").write_text('{"prompt": "p"}\n')
    (world / "data" / "labels" / "preferences.jsonl").write_text(json.dumps({"chosen": labels}) + "\n")
    (world / "sft" / "model.safetensors").write_bytes(b"sft weights")
    (world / "sft" / "tokenizer.json").write_text("{}")


def test_finished_cells_are_copied_not_computed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    s1, s2, s3 = {"x": 1}, {"x": 2}, {"x": 3}
    run_cells(a, [s1, s2], FUNC)
    (cell_dir(a, s2) / "result.json").unlink()  # an unfinished cell of a is not reused
    res = run_cells(b, [s1, s2, s3], FUNC, reuse_from=[a])
    assert [r["y"] for r in res] == [2, 4, 6]
    assert [e["hash"] for e in computed_log(b)] == [cell_hash(s2), cell_hash(s3)]  # s1 came from a
    assert (cell_dir(b, s1) / "model.txt").read_text() == "weights of 1"  # the whole cell, files included
    assert not list((b / "cells").glob(".*"))  # no temporary copy left behind
    # rerunning b computes nothing: every cell is now b's own
    run_cells(b, [s1, s2, s3], FUNC, reuse_from=[a])
    assert len(computed_log(b)) == 2


def test_only_folders_with_the_same_world_are_reused(tmp_path, capsys):
    mine, same, other = tmp_path / "mine", tmp_path / "same", tmp_path / "other"
    for out, labels in ((mine, "a"), (same, "a"), (other, "b")):
        fake_world(out, labels)
    assert world_fingerprint(mine) == world_fingerprint(same) != world_fingerprint(other)
    assert world_fingerprint(tmp_path / "nothing") is None
    assert same_world(mine, [same, other]) == [same]
    assert f"not reusing cells of {other}" in capsys.readouterr().out


def test_an_empty_out_starts_from_the_sources_world(tmp_path):
    src, new = tmp_path / "src", tmp_path / "new"
    fake_world(src)
    new.mkdir()
    adopt_world(new, [tmp_path / "no-world", src])
    assert world_fingerprint(new) == world_fingerprint(src)
    (new / "world" / "sft" / "model.safetensors").write_bytes(b"trained again")
    adopt_world(new, [src])  # an existing world is never replaced
    assert world_fingerprint(new) != world_fingerprint(src)


def test_reuse_from_must_name_experiment_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'reuse_from': .*nope is not an experiment output folder"):
        resolve(ExperimentConfig(name="variants", preset="quick", out=str(tmp_path / "o"),
                                 reuse_from=str(tmp_path / "nope")))  # fmt: skip
    (tmp_path / "o" / "cells").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is --out itself"):
        resolve(ExperimentConfig(name="variants", preset="quick", out=str(tmp_path / "o"),
                                 reuse_from=str(tmp_path / "o")))  # fmt: skip
