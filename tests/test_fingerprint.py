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


# ----------------------------------------------------------------------------- shards per host


def test_each_host_appends_to_its_own_shard_and_merged_orders_by_item(tmp_path):
  path = tmp_path / ".out.partial.jsonl"
  hosts = [jsonl.Host(k, 3) for k in range(3)]
  ids = [f"p{i}" for i in range(7)]
  assert [h.share(ids) for h in hosts] == [["p0", "p3", "p6"], ["p1", "p4"], ["p2", "p5"]]
  for h in reversed(hosts):  # finishing order does not matter
    jsonl.ResumableRecords(path, {"t": 1}, "x", h).add([{"id": i} for i in h.share(ids)])
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      f".out.partial-0000{k}-of-00003.jsonl" for k in range(3)]
  log = jsonl.ResumableRecords(path, {"t": 1}, "x", hosts[0])
  assert sorted(log.done) == ["p0", "p3", "p6"]  # the other hosts' shards are theirs until merged
  assert [r["id"] for r in log.merged(ids)] == ids
  with pytest.raises(ValueError, match=r"x: 1 of 8 records are in no shard .*'p7'"):
    log.merged(ids + ["p7"])


def test_finish_merges_on_host_0_only_between_two_barriers(tmp_path):
  path, out, calls = tmp_path / ".o.partial.jsonl", tmp_path / "o.jsonl", []
  one = jsonl.ResumableRecords(path, {}, "x", jsonl.Host(1, 2))
  one.add([{"id": "b"}])
  assert one.finish(out, ["a", "b"], sync=calls.append) is None and not out.exists()
  zero = jsonl.ResumableRecords(path, {}, "x", jsonl.Host(0, 2))
  zero.add([{"id": "a"}])
  assert zero.finish(out, ["a", "b"], {"c": {"id": "c", "v": 1}}, calls.append) == [
      {"id": "a"}, {"id": "b"}]
  assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]
  assert len(calls) == 4 and calls[0].endswith("every host wrote its shard")


def test_a_rerun_on_another_number_of_hosts_keeps_what_the_old_shards_hold(tmp_path):
  path = tmp_path / ".o.partial.jsonl"
  jsonl.ResumableRecords(path, {}, "x", jsonl.Host(1, 2)).add([{"id": "b"}])
  with open(path.with_name(".o.partial-00001-of-00002.jsonl"), "a") as f:
    f.write('{"id": "d", "ans')  # the old host was killed mid-write
  alone = jsonl.ResumableRecords(path, {}, "x")
  assert sorted(alone.done) == ["b"]
  # Read, never repaired: the torn line belongs to a writer that is gone.
  assert path.with_name(".o.partial-00001-of-00002.jsonl").read_text().endswith('"ans')


# ----------------------------------------------------------------------------- the stages


def _tiny_config(workdir):
  from cai_jax import config as config_lib
  from cai_jax.cli import _load_experiment
  config = _load_experiment("experiments/tiny.py")
  config.workdir = str(workdir)
  config.sampler.max_new_tokens = 4
  config.sampler.batch_size = 2
  config.sl_data.update(n_prompts=2, n_helpful=0, n_rounds=1, n_few_shot=0)
  config.feedback.update(n_prompts=2, n_few_shot=0)
  config_lib.validate(config)
  return config


@pytest.mark.parametrize("stage,folder", [("sl_data", "sl_data"), ("feedback", "feedback")])
def test_a_generation_stage_refuses_to_run_beside_a_live_run(tmp_path, stage, folder):
  from cai_jax import stages
  config = _tiny_config(tmp_path)
  with fp.stage_lock(tmp_path / folder):
    with pytest.raises(fp.StageBusy, match=f"{folder}: another run is writing here"):
      stages.get(stage.replace("_", "-"))(config)
  assert not (tmp_path / folder / f"{'sl_cai' if stage == 'sl_data' else 'feedback'}.jsonl").exists()


@pytest.mark.parametrize("stage,field,change,named", [
    ("sl-data", "sl_data.n_rounds", 2, r"sl_cai.settings.json\); changed: settings.n_rounds: 1 -> 2"),
    ("feedback", "feedback.k_principles", 2,
     r"feedback.settings.json\); changed: labels.k_principles: 1 -> 2")])
def test_a_generation_stage_refuses_other_settings_in_the_same_workdir(tmp_path, stage, field,
                                                                        change, named):
  from cai_jax import config as config_lib
  from cai_jax import stages
  config = _tiny_config(tmp_path)
  stages.get(stage)(config)
  section, name = field.split(".")
  config[section][name] = change
  config_lib.validate(config)
  with pytest.raises(ValueError, match=named):
    stages.get(stage)(config)
