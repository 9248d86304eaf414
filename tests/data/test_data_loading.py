import json

import pytest

from rto.data.loading import load_rows
from rto.errors import DataError

ROWS = [{"prompt": "Hi", "completion": " there"}, {"prompt": "Yo", "completion": " dude"}]


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")  # trailing blank lines ignored
    assert load_rows(str(path)) == ROWS


def test_json_list_and_keyed_object(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    assert load_rows(str(path)) == ROWS
    path.write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}))
    assert load_rows(str(path), split="test") == ROWS[:1]
    path.write_text(json.dumps({"data": ROWS}))
    assert load_rows(str(path)) == ROWS


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    assert load_rows(str(path)) == ROWS


def test_parquet_keeps_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_rows(str(path)) == rows


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nHi," there"\n"Yo, man"," dude"\n')
    assert load_rows(str(path)) == [
        {"prompt": "Hi", "completion": " there"},
        {"prompt": "Yo, man", "completion": " dude"},
    ]


def test_csv_row_with_extra_cells_names_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nHi,there\nYo,dude,extra\n")
    with pytest.raises(DataError, match=r"d\.csv:3: 3 cells but the header has 2"):
        load_rows(str(path))


def test_saved_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert load_rows(str(tmp_path / "single")) == ROWS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert load_rows(str(tmp_path / "dd"), split="train") == ROWS
    with pytest.raises(DataError, match=r"no split 'test'; available splits: \['train'\]"):
        load_rows(str(tmp_path / "dd"), split="test")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_rows(str(path))


def test_unknown_name_is_treated_as_hub_name():
    with pytest.raises(DataError) as e:
        load_rows("no-such-owner-xyz/no-such-dataset-xyz")
    msg = str(e.value)
    assert "no-such-owner-xyz/no-such-dataset-xyz" in msg
    assert "treated as a Hugging Face Hub dataset name" in msg


def test_malformed_jsonl_line_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        load_rows(str(path))


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n["a", "b"]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: each line must be a JSON object, got list"):
        load_rows(str(path))


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_rows(str(path))


def test_json_not_a_list_of_objects(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"text": "a"}, "b"]))
    with pytest.raises(DataError, match=r"bad\.json: item 2 must be a JSON object, got str"):
        load_rows(str(path))
    path.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(DataError, match=r"bad\.json: expected a list of objects.*keys \['rows'\]"):
        load_rows(str(path))
    path.write_text("42")
    with pytest.raises(DataError, match=r"bad\.json: expected a list of objects, got int"):
        load_rows(str(path))


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        load_rows(str(path))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("  \n")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: file is empty"):
        load_rows(str(path))


def test_empty_list_has_no_rows(tmp_path):
    path = tmp_path / "e.json"
    path.write_text("[]")
    with pytest.raises(DataError, match=r"e\.json: contains no rows"):
        load_rows(str(path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"d\.txt: unsupported file type '\.txt'"):
        load_rows(str(path))
