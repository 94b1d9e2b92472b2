"""SL-CAI data generation on the tiny model: records, modes, resume after a kill."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from flax import nnx

from cai_jax import constitution as C
from cai_jax import sampling
from cai_jax.cai import revision as sl_cai
from cai_jax.data import prompts as P
from cai_jax.sampling import SamplerSettings, TextSampler

from tiny_model import TinyModel

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = sl_cai.SLDataSettings(n_rounds=2, n_few_shot=1, seed=3)
SAMPLER = SamplerSettings(max_new_tokens=8, max_prompt_len=256, batch_size=4)


def sampler(model, **changes) -> TextSampler:
  return TextSampler(model, dataclasses.replace(SAMPLER, **changes), seed=3)


def tiny_model() -> TinyModel:
  from cai_jax.models import Transformer, get_model_config
  graphdef, state = nnx.split(Transformer(get_model_config("tiny"), rngs=nnx.Rngs(0)))
  return TinyModel(graphdef, nnx.to_pure_dict(state))


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def constitution():
  return C.load_constitution(REPO / "constitutions" / "base.toml")


def _read(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_records_follow_the_schema_and_the_principle_draws(tmp_path, model, constitution):
  red, helpful = P.load_prompts("red_team", limit=3), P.load_prompts("helpful", limit=2)
  out = tmp_path / "sl.jsonl"
  summary = sl_cai.generate_sl_data(sampler(model), constitution, red, helpful, out, SETTINGS, fp="fp1")
  records = _read(out)
  assert summary["written"] == 5 and [r["id"] for r in records] == [p.id for p in red + helpful]
  for r, p in zip(records, red + helpful):
    assert set(r) == {"id", "prompt", "initial", "rounds", "kind", "model", "config_fingerprint"}
    assert r["prompt"] == p.text and r["model"] == "random:tiny" and r["config_fingerprint"] == "fp1"
  for r in records[:3]:
    assert r["kind"] == "red_team" and len(r["rounds"]) == 2
    drawn = constitution.sample(np.random.default_rng([3, sl_cai._row_id(r["id"])]), 2)
    assert [x["principle"] for x in r["rounds"]] == [p.id for p in drawn]
    assert all(isinstance(x["critique"], str) and isinstance(x["revision"], str) for x in r["rounds"])
  assert all(r["kind"] == "helpful" and r["rounds"] == [] for r in records[3:])
  # The initial answer is exactly the sampler's output for that prompt's row id and phase 0.
  tok = model.tokenizer
  ids = tok.encode(model.chat.format([{"role": "user", "content": helpful[0].text}]))
  ref = sampling.generate(model.graphdef, model.params, [ids], rng=jax.random.fold_in(jax.random.key(3), 0),
                          max_new_tokens=8, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                          row_ids=[sl_cai._row_id(helpful[0].id)])
  expected = tok.decode([t for t in ref.row(0) if t not in tok.stop_ids]).strip()
  assert records[3]["initial"] == expected


def test_direct_mode_has_no_critiques(tmp_path, model, constitution):
  out = tmp_path / "direct.jsonl"
  settings = dataclasses.replace(SETTINGS, mode="direct", n_rounds=1)
  sl_cai.generate_sl_data(sampler(model), constitution, P.load_prompts("red_team", limit=2), [], out, settings,
                          fp="d")
  assert [[x["critique"] for x in r["rounds"]] for r in _read(out)] == [[None], [None]]


def test_conversations_put_few_shot_first_and_skip_critique_in_direct_mode(constitution):
  ex = constitution.few_shot[:1]
  p = constitution.get("avoid-harm")
  crit = sl_cai.critique_messages(sl_cai.few_shot_messages(ex, "critique"), "Q", "A", p)
  assert [m["content"] for m in crit[-3:]] == ["Q", "A", p.critique]
  assert crit[2]["content"] == ex[0].critique_request and crit[3]["content"] == ex[0].critique
  direct = sl_cai.revision_messages(sl_cai.few_shot_messages(ex, "direct"), "Q", "A", p, None)
  assert [m["content"] for m in direct[-3:]] == ["Q", "A", p.revision]
  assert all(m["content"] not in (ex[0].critique, p.critique) for m in direct)


def test_resume_drops_a_truncated_line_and_completes(tmp_path, model, constitution, caplog):
  red = P.load_prompts("red_team", limit=5)
  out = tmp_path / "sl.jsonl"
  full = tmp_path / "full.jsonl"
  sl_cai.generate_sl_data(sampler(model), constitution, red, [], full, SETTINGS, fp="fp")
  lines = full.read_text().splitlines(keepends=True)
  out.write_text(lines[0] + lines[1] + lines[2][:40])  # a kill in the middle of record 3
  sl_cai.generate_sl_data(sampler(model), constitution, red, [], out, SETTINGS, fp="fp")
  assert "torn last record" in caplog.text
  got = out.read_text().splitlines(keepends=True)
  assert got[:2] == lines[:2]  # earlier records untouched
  assert sorted(r["id"] for r in _read(out)) == sorted(p.id for p in red)
  with pytest.raises(ValueError, match="config fingerprint fp, but this run's is other"):
    sl_cai.generate_sl_data(sampler(model), constitution, red, [], out, SETTINGS, fp="other")


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_sl_cai import SETTINGS, sampler, tiny_model
    from cai_jax import constitution as C
    from cai_jax.cai import revision
    from cai_jax.data import prompts as P
    con = C.load_constitution({base!r})
    red = P.load_prompts("red_team", limit=16)
    revision.generate_sl_data(sampler(tiny_model(), batch_size=2), con, red, [], {out!r}, SETTINGS,
                              fp="kill")
""")


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
  out = tmp_path / "killed.jsonl"
  shard = tmp_path / ".killed.partial.jsonl"  # its settings line, then the records so far
  code = _CHILD.format(tests=str(REPO / "tests"), base=str(REPO / "constitutions/base.toml"),
                       out=str(out))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and child.poll() is None:
    if shard.exists() and shard.read_bytes().count(b"\n") >= 3:
      break
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  before = shard.read_bytes().count(b"\n") - 1
  assert not out.exists() and 2 <= before < 16, f"the child was not killed mid-run ({before} records)"
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  ids = [r["id"] for r in _read(out)]
  assert len(ids) == len(set(ids)) == 16
  assert ids == [p.id for p in P.load_prompts("red_team", limit=16)]
  assert not shard.exists()


def test_stages_run_from_a_config(tmp_path, capsys):
  from cai_jax import config as config_lib
  from cai_jax.stages import generate, sl_data
  spec = __import__("importlib.util").util.spec_from_file_location("tiny_exp", REPO / "experiments/tiny.py")
  module = __import__("importlib.util").util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.workdir = str(tmp_path)
  config.sampler.max_new_tokens = 4
  config.sl_data.update(n_prompts=2, n_helpful=1, n_rounds=1, n_few_shot=0)
  config_lib.validate(config)
  summary = sl_data.run(config)
  records = _read(tmp_path / "sl_data" / "sl_cai.jsonl")
  assert summary["written"] == 3 and [r["kind"] for r in records] == ["red_team", "red_team", "helpful"]
  assert all(r["model"] == "random:tiny" and len(r["config_fingerprint"]) == 16 for r in records)
  assert sl_data.run(config)["written"] == 0  # a rerun finds everything done
  config.sl_data.n_rounds = 2  # a different recipe must not mix into the same file
  with pytest.raises(ValueError, match=r"sl_cai.settings.json\); changed: settings.n_rounds: 1 -> 2"):
    sl_data.run(config)
  capsys.readouterr()
  out = generate.run(config)
  assert capsys.readouterr().out.strip() == out["answer"]
