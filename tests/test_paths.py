"""Local and object-store paths (cai_jax/paths.py) and the files written through them.

A "bucket" here is etils' mock backend (epath.testing.mock_epath) with every gs:// path
mapped into a temporary folder and appends refused, as an object store refuses them;
nothing touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from cai_jax import paths
from cai_jax.data import fingerprint, jsonl
from cai_jax.data.prompts import load_prompts
from cai_jax.layout import RunLayout

BUCKET = "gs://test-bucket"


@contextlib.contextmanager
def fake_bucket(root: pathlib.Path):
  """gs://test-bucket/... lives under root/test-bucket/...; opening for append fails."""
  def local(path) -> str:
    text = os.fspath(path)
    return str(root / text[len("gs://"):]) if text.startswith("gs://") else text

  def remote(path: str) -> str:
    return "gs://" + str(pathlib.Path(path).relative_to(root))

  def one(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two(fn, path, dst, *args, **kwargs):
    return fn(local(path), local(dst), *args, **kwargs)

  def open_(fn, path, mode, *args, **kwargs):
    if "a" in mode:
      raise OSError(f"{path}: an object store cannot append")
    return fn(local(path), mode, *args, **kwargs)

  def glob(fn, pattern):
    return [remote(p) for p in fn(local(pattern))]

  with epath_testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, makedirs=one,
                                mkdir=one, remove=one, rmtree=one, stat=one, glob=glob,
                                rename=two, replace=two, copy=two):
    yield root / BUCKET[len("gs://"):]


def test_local_paths_stay_pathlib_and_urls_become_epath(tmp_path):
  assert type(paths.as_path(tmp_path / "a")) is type(pathlib.Path(tmp_path))
  assert type(paths.as_path("runs/x")) is type(pathlib.Path("runs/x"))
  remote = paths.as_path(f"{BUCKET}/runs/x")
  assert isinstance(remote, epath.Path) and str(remote) == f"{BUCKET}/runs/x"
  assert [paths.is_remote(p) for p in ("gs://b/x", "s3://b/x", "/gs://x", "runs/gs:", "C:/x")] == [
      True, True, False, False, False]


def test_run_layout_keeps_a_bucket_workdir_a_url():
  layout = RunLayout(f"{BUCKET}/run")
  assert str(layout.sl_data) == f"{BUCKET}/run/sl_data/sl_cai.jsonl"
  assert str(layout.settings_of(layout.feedback)) == f"{BUCKET}/run/feedback/feedback.settings.json"
  assert isinstance(layout.stage_dir("audit"), epath.Path)


def test_write_atomically_leaves_the_whole_file_and_no_temporary(tmp_path):
  paths.write_atomically(tmp_path / "d" / "f.json", "one")
  paths.write_atomically(tmp_path / "d" / "f.json", b"two")
  assert (tmp_path / "d" / "f.json").read_text() == "two"
  assert os.listdir(tmp_path / "d") == ["f.json"]


def test_append_lines_appends_locally_and_refuses_a_url(tmp_path):
  paths.append_lines(tmp_path / "a.jsonl", ["1\n"])
  paths.append_lines(tmp_path / "a.jsonl", ["2\n", "3\n"])
  assert (tmp_path / "a.jsonl").read_text() == "1\n2\n3\n"
  with pytest.raises(ValueError, match="cannot be appended to"):
    paths.append_lines(f"{BUCKET}/a.jsonl", ["1\n"])


def test_a_bucket_write_goes_through_a_temporary_object(tmp_path):
  with fake_bucket(tmp_path) as bucket:
    paths.write_atomically(f"{BUCKET}/run/x.json", '{"a": 1}')
    assert paths.as_path(f"{BUCKET}/run/x.json").read_text() == '{"a": 1}'
    assert paths.size(paths.as_path(f"{BUCKET}/run/x.json")) == 8
  assert os.listdir(bucket / "run") == ["x.json"]


def test_prompts_and_jsonl_are_read_from_a_bucket(tmp_path):
  with fake_bucket(tmp_path) as bucket:
    (bucket / "data").mkdir(parents=True)
    (bucket / "data" / "p.jsonl").write_text(
        '{"id": "a", "prompt": "first"}\n{"id": "b", "prompt": "second"}\n')
    got = load_prompts(f"{BUCKET}/data/p.jsonl")
    assert [(p.id, p.text) for p in got] == [("a", "first"), ("b", "second")]
    (bucket / "data" / "bad.jsonl").write_text('{"prompt": "x"}\n[1]\n')
    with pytest.raises(ValueError, match=r"^gs://test-bucket/data/bad.jsonl:2: expected a JSON object"):
      list(jsonl.iter_jsonl(f"{BUCKET}/data/bad.jsonl"))


def test_settings_are_recorded_and_checked_in_a_bucket(tmp_path):
  with fake_bucket(tmp_path):
    path = f"{BUCKET}/run/sl_data/sl_cai.settings.json"
    first = fingerprint.check_or_write(path, {"seed": 1}, "the records")
    assert fingerprint.check_or_write(path, {"seed": 1}, "the records") == first
    with pytest.raises(ValueError, match=r"sl_cai.settings.json\); changed: seed: 1 -> 2"):
      fingerprint.check_or_write(path, {"seed": 2}, "the records")
    with fingerprint.stage_lock(f"{BUCKET}/run/sl_data"):  # no locks on a bucket: a warning
      pass


def test_records_in_a_bucket_are_part_objects_resumed_and_merged(tmp_path):
  ids = [f"p{i}" for i in range(5)]
  with fake_bucket(tmp_path) as bucket:
    partial = f"{BUCKET}/run/feedback/.feedback.partial.jsonl"
    for host in (jsonl.Host(0, 2), jsonl.Host(1, 2)):
      log = jsonl.ResumableRecords(partial, {"k": 1}, "x", host)
      mine = host.share(ids)
      log.add([{"id": i} for i in mine[:1]])
      log.add([{"id": i} for i in mine[1:]])
    parts = sorted(os.listdir(bucket / "run" / "feedback"))
    assert parts == [f".feedback.partial-0000{h}-of-00002.00000{k}.jsonl"
                     for h in (0, 1) for k in (1, 2)]
    again = jsonl.ResumableRecords(partial, {"k": 1}, "x", jsonl.Host(0, 2))
    assert sorted(again.done) == ["p0", "p2", "p4"]
    again.add([])  # a later batch is a new part, never an overwrite
    assert ".feedback.partial-00000-of-00002.000003.jsonl" in os.listdir(bucket / "run" / "feedback")
    out = f"{BUCKET}/run/feedback/feedback.jsonl"
    assert [r["id"] for r in again.finish(out, ids)] == ids
    assert os.listdir(bucket / "run" / "feedback") == ["feedback.jsonl"]
    assert [json.loads(x)["id"] for x in (bucket / "run/feedback/feedback.jsonl").read_text().splitlines()] == ids


def test_feedback_with_a_bucket_workdir_writes_what_a_local_workdir_gets(tmp_path):
  from cai_jax import config as config_lib
  from cai_jax.cli import _load_experiment
  from cai_jax.stages import feedback

  def config_in(workdir: str):
    config = _load_experiment("experiments/tiny.py")
    config.workdir = workdir
    config.sampler.update(max_new_tokens=4, batch_size=2)
    config.feedback.update(n_prompts=3, n_few_shot=0)
    config_lib.validate(config)
    return config

  feedback.run(config_in(str(tmp_path / "local")))
  with fake_bucket(tmp_path / "gcs") as bucket:
    summary = feedback.run(config_in(f"{BUCKET}/run"))
  assert summary["out"] == f"{BUCKET}/run/feedback/feedback.jsonl"
  assert sorted(os.listdir(bucket / "run" / "feedback")) == ["feedback.jsonl",
                                                            "feedback.settings.json"]
  assert ((bucket / "run/feedback/feedback.jsonl").read_text()
          == (tmp_path / "local/feedback/feedback.jsonl").read_text())
