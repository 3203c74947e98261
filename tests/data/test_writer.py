"""The shard writer: index with counts, resumable, refuses changed settings."""

import io
import json
import os

import pytest

from pippo_jax.data_pipelines import sources, writer


def _record(i):
  return f"record-{i}".encode() * (i + 1)


def test_index_counts_and_random_access(tmp_path):
  entry = writer.write_split(str(tmp_path), "train", "image", 10, _record, 4)
  assert [s["count"] for s in entry["shards"]] == [4, 4, 2]
  assert entry["complete"] and entry["num_records"] == 10
  index = writer.read_index(str(tmp_path))
  assert index["splits"]["train"]["num_records"] == 10
  src = sources.ArrayRecordSource(str(tmp_path), "train")
  assert len(src) == 10
  assert [src[i]["bytes"] for i in (0, 5, 9)] == [_record(0), _record(5), _record(9)]
  assert src[5]["where"] == "train-00001-of-00003.array_record#1"


def test_resume_rewrites_only_missing_shards(tmp_path):
  d = str(tmp_path)
  writer.write_split(d, "train", "image", 10, _record, 4, meta={"seed": 1})
  first = {
    n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d) if n.endswith(".array_record")
  }
  # Simulate an interruption after the first shard: shard 1 and 2 missing,
  # the index not yet marked complete.
  os.remove(os.path.join(d, "train-00001-of-00003.array_record"))
  os.remove(os.path.join(d, "train-00002-of-00003.array_record"))
  index = writer.read_index(d)
  index["splits"]["train"]["complete"] = False
  with open(os.path.join(d, writer.INDEX_FILE), "w") as f:
    json.dump(index, f)
  calls = []
  entry = writer.write_split(
    d, "train", "image", 10, lambda i: calls.append(i) or _record(i), 4, meta={"seed": 1}
  )
  assert calls == list(range(4, 10))  # shard 0 was not redone
  assert entry["complete"] and len(entry["shards"]) == 3
  again = {
    n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d) if n.endswith(".array_record")
  }
  assert again == first


def test_changed_settings_are_refused(tmp_path):
  writer.write_split(str(tmp_path), "train", "image", 4, _record, 4, meta={"seed": 1})
  with pytest.raises(writer.DatasetError, match="other settings"):
    writer.write_split(str(tmp_path), "train", "image", 4, _record, 4, meta={"seed": 2})
  with pytest.raises(writer.DatasetError, match="holds image records"):
    writer.write_split(str(tmp_path), "test", "capture", 4, _record, 4)


def test_progress_is_reported(tmp_path):
  stream = io.StringIO()
  writer.write_split(
    str(tmp_path),
    "train",
    "image",
    6,
    _record,
    4,
    progress=writer.Progress("demo", 6, interval=0, stream=stream),
  )
  lines = stream.getvalue().strip().splitlines()
  assert lines[-1].startswith("demo: 6/6 records (100%)")
  assert len(lines) >= 6


def test_missing_directory_message(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a pippo dataset directory"):
    sources.ArrayRecordSource(str(tmp_path / "nope"))


@pytest.mark.parametrize(
  "text, message",
  [
    ("{not json", "is damaged .JSONDecodeError: .*; delete it and re-run"),
    ('["a list"]', "is not a pippo-records index"),
  ],
)
def test_damaged_index_names_the_file_and_what_to_do(tmp_path, text, message):
  path = tmp_path / writer.INDEX_FILE
  path.write_text(text)
  for read in (writer.read_index, sources.ArrayRecordSource):
    with pytest.raises(writer.DatasetError, match=message) as e:
      read(str(tmp_path))
    assert str(e.value).startswith(f"{path} ")
  with pytest.raises(writer.DatasetError, match=message):  # nothing overwritten
    writer.write_split(str(tmp_path), "train", "image", 4, _record, 4)
  assert path.read_text() == text
  with pytest.raises(FileNotFoundError, match="nope/index.json not found"):
    writer.read_index(str(tmp_path / "nope"))


def test_missing_and_truncated_shards_are_named_and_rewritten(tmp_path):
  d = str(tmp_path)
  entry = writer.write_split(d, "train", "image", 10, _record, 4)
  first = {s["file"]: open(os.path.join(d, s["file"]), "rb").read() for s in entry["shards"]}
  assert [writer.check_shard(d, s) for s in entry["shards"]] == [None] * 3
  missing, cut = (os.path.join(d, s["file"]) for s in entry["shards"][1:])
  os.remove(missing)
  listed = entry["shards"][2]["bytes"]
  with open(cut, "r+b") as f:
    f.truncate(listed // 2)
  assert writer.check_shard(d, entry["shards"][1]) == (f"{missing}: missing (listed in index.json)")
  assert writer.check_shard(d, entry["shards"][2]) == (
    f"{cut}: truncated, {listed // 2} bytes on disk but index.json lists {listed}"
  )
  # A reader (the training pipeline's source) gives the same message.
  src = sources.ArrayRecordSource(d)
  assert "bytes" in src[0]
  assert src[9]["error"].startswith(f"DatasetError: {cut}: truncated, {listed // 2} bytes on disk")
  assert "re-run the command that wrote the dataset" in src[9]["error"]
  calls = []
  writer.write_split(d, "train", "image", 10, lambda i: calls.append(i) or _record(i), 4)
  assert calls == list(range(4, 10))  # both damaged shards, nothing else
  assert {n: open(os.path.join(d, n), "rb").read() for n in first} == first
