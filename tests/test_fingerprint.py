"""Settings fingerprints, the refusal to continue an output made with other settings, the
stage lock, and the append-only files generation stages resume from (data/fingerprint.py,
data/jsonl.py)."""

import gzip
import json
import signal
import subprocess
import sys

import pytest

from cai_jax.data import fingerprint as fp
from cai_jax.data import jsonl


def test_fingerprint_ignores_key_order_and_tuple_vs_list_but_not_values():
  a = fp.settings_fingerprint({"lr": 1e-5, "shape": (2, 3), "optim": {"b1": 0.9, "name": "adamw"}})
  b = fp.settings_fingerprint({"optim": {"name": "adamw", "b1": 0.9}, "shape": [2, 3], "lr": 1e-5})
  c = fp.settings_fingerprint({"lr": 1e-4, "shape": (2, 3), "optim": {"b1": 0.9, "name": "adamw"}})
  assert a == b != c and len(a) == 16 and int(a, 16) >= 0


def test_changed_fields_are_dotted_with_old_and_new_values():
  old = {"optim": {"lr": 1e-5, "b1": 0.9}, "data": ["a.jsonl"], "seed": 0}
  new = {"optim": {"lr": 1e-3, "b1": 0.9}, "data": ["a.jsonl", "b.jsonl"], "seed": 0, "extra": True}
  assert fp.changed_fields(old, new) == ["data.1: <none> -> 'b.jsonl'", "extra: <none> -> True",
                                         "optim.lr: 1e-05 -> 0.001"]


def test_check_or_write_records_then_accepts_the_same_settings(tmp_path):
  path = tmp_path / "out" / "settings.json"
  first = fp.check_or_write(path, {"lr": 1e-5}, "the outputs")
  text = path.read_text()
  assert fp.check_or_write(path, {"lr": 1e-5}, "the outputs") == first
  assert path.read_text() == text
  assert json.loads(text) == {"what": "the outputs", "fingerprint": first, "settings": {"lr": 1e-5}}


def test_check_or_write_refuses_other_settings_naming_fields_file_and_way_out(tmp_path):
  path = tmp_path / "settings.json"
  fp.check_or_write(path, {"lr": 1e-5, "data": {"hash": "aa"}, "steps": 10}, "the rm checkpoints")
  with pytest.raises(ValueError) as e:
    fp.check_or_write(path, {"lr": 1e-3, "data": {"hash": "bb"}, "steps": 10}, "the rm checkpoints")
  message = str(e.value)
  assert message.startswith("the rm checkpoints: made with other settings")
  assert "data.hash: 'aa' -> 'bb'; lr: 1e-05 -> 0.001." in message and "steps" not in message
  assert str(path) in message and "new workdir" in message


def test_a_damaged_settings_file_is_named(tmp_path):
  path = tmp_path / "settings.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match=r"settings.json: not a settings file"):
    fp.check_or_write(path, {"lr": 1}, "x")


def test_a_second_lock_on_a_folder_is_refused_until_the_first_is_released(tmp_path):
  with fp.stage_lock(tmp_path / "rm"):
    with pytest.raises(fp.StageBusy, match=r"rm: another run is writing here"):
      with fp.stage_lock(tmp_path / "rm"):
        pass
    with fp.stage_lock(tmp_path / "sft"):  # another folder is another lock
      pass
  with fp.stage_lock(tmp_path / "rm"):
    pass
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rm", "sft"]  # and no lock files
  assert list((tmp_path / "rm").iterdir()) == []


def test_the_lock_of_a_killed_process_is_released(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom cai_jax.data.fingerprint import stage_lock\n"
       f"with stage_lock({str(tmp_path)!r}):\n  print('locked', flush=True)\n  time.sleep(600)\n"],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(fp.StageBusy):
      with fp.stage_lock(tmp_path):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with fp.stage_lock(tmp_path):
    pass


def test_read_appended_cuts_a_torn_last_line(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "ans')
  assert jsonl.read_appended(path) == [{"id": "a"}, {"id": "b"}]
  assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
  assert jsonl.read_appended(tmp_path / "none.jsonl") == []


def test_resumable_records_continue_only_with_the_same_settings(tmp_path):
  path = tmp_path / ".answers.partial.jsonl"
  log = jsonl.ResumableRecords(path, {"temperature": 1.0}, "the answers")
  log.add([{"id": "a", "answer": "x"}])
  log.add([{"id": "b", "answer": "y"}])
  lines = path.read_text().splitlines()
  assert len(lines) == 3 and json.loads(lines[0])["settings"] == {"temperature": 1.0}
  again = jsonl.ResumableRecords(path, {"temperature": 1.0}, "the answers")
  assert again.done == {"a": {"id": "a", "answer": "x"}, "b": {"id": "b", "answer": "y"}}
  with pytest.raises(ValueError, match=r"temperature: 1.0 -> 0.5.*partial.jsonl"):
    jsonl.ResumableRecords(path, {"temperature": 0.5}, "the answers")
  again.remove()
  assert not path.exists()


def test_resumable_records_refuse_an_id_written_twice(tmp_path):
  path = tmp_path / "p.jsonl"
  log = jsonl.ResumableRecords(path, {}, "x")
  log.add([{"id": "a"}])
  with path.open("a") as f:
    f.write('{"id": "a"}\n')
  with pytest.raises(ValueError, match=r"p.jsonl:3:id: 'a' appears twice"):
    jsonl.ResumableRecords(path, {}, "x")


def test_truncated_gzip_names_the_file_and_the_lines_read(tmp_path):
  data = gzip.compress("".join(json.dumps({"prompt": f"p{i}" * 40}) + "\n" for i in range(500)).encode())
  path = tmp_path / "prompts.jsonl.gz"
  path.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match=r"prompts.jsonl.gz: truncated gzip file \(read \d+ lines"):
    list(jsonl.iter_jsonl(path))
  path.write_bytes(b"plain text, not gzip\n")
  with pytest.raises(ValueError, match=r"prompts.jsonl.gz: not a valid gzip file"):
    list(jsonl.iter_jsonl(path))
