"""Stage `sft` end to end on the tiny model: learns, reports skips, exports, resumes."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from cai_jax import config as config_lib
from cai_jax.models.load import load_model
from cai_jax.stages import common
from cai_jax.stages import sft

TINY = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "tiny.py"


def _write_sl_cai(path: pathlib.Path, bad_line: bool) -> None:
  lines = []
  for i in range(12):
    if i % 3 == 0:
      lines.append(json.dumps({"id": f"h{i}", "prompt": f"Add {i} and 1.", "initial": f"{i + 1}.",
                               "rounds": [], "kind": "helpful"}))
    else:
      lines.append(json.dumps({"id": f"r{i}", "prompt": f"Secret {i}?", "initial": "ok", "kind": "red_team",
                               "rounds": [{"principle": "p", "critique": "c", "revision": f"No secret {i}."}]}))
  if bad_line:
    lines.insert(4, '{"id": "broken", "prompt": ')
  path.write_text("\n".join(lines) + "\n")


def _config(tmp_path, data, **sft_fields):
  spec = importlib.util.spec_from_file_location("tiny", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  overrides = {"workdir": str(tmp_path / "run"), "sft.data": str(data), "sft.seq_len": 64,
               "sft.batch_size": 8, "sft.num_steps": 12, "sft.eval_fraction": 0.0, "sft.log_every": 0,
               "sft.checkpoint_every": 6, "sft.optim.lr": 3e-3, "sft.optim.warmup_steps": 0,
               "sft.optim.schedule": "constant", "mesh.data": 4, "mesh.tensor": 2}
  overrides.update(sft_fields)
  config_lib.apply_overrides(config, overrides)
  return config_lib.validate(config)


def test_sft_stage_learns_counts_skips_exports_and_resumes(tmp_path):
  data = tmp_path / "sl.jsonl"
  _write_sl_cai(data, bad_line=True)
  with pytest.raises(ValueError, match=r"sl.jsonl:5: .*JSON"):
    sft.run(_config(tmp_path, data))
  config = _config(tmp_path, data, **{"sft.on_error": "skip"})
  summary = sft.run(config)
  assert summary["steps"] == 12 and summary["skipped"] == {"malformed_json": 1}
  assert summary["last_loss"] < 0.6 * summary["first_loss"], summary  # ~ln(264) = 5.6 at init
  run = pathlib.Path(config.workdir) / "sft"
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 13))
  # The HF export loads back as a model source and holds the trained weights.
  section = common.model_spec(config, source=summary["export_hf"])
  exported = load_model(section)
  from cai_jax.train.checkpoint import Checkpointer
  steps = Checkpointer(run / "checkpoints").all_steps()
  assert steps[-1] == 12
  # A rerun with more steps resumes at 12 (data iterator included) instead of starting over.
  more = sft.run(_config(tmp_path, data, **{"sft.on_error": "skip", "sft.num_steps": 14}))
  assert more["steps"] == 14
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 15))
  final = load_model(section)  # the re-export after 14 steps differs from the one after 12
  diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
           zip(jax.tree.leaves(exported.params), jax.tree.leaves(final.params))]
  assert max(diffs) > 0
  # A rerun with another learning rate or other data is refused, naming what changed.
  with pytest.raises(ValueError, match=r"training.optim.lr: 0.003 -> 0.001.*new workdir"):
    sft.run(_config(tmp_path, data, **{"sft.on_error": "skip", "sft.optim.lr": 1e-3}))
  _write_sl_cai(data, bad_line=False)
  with pytest.raises(ValueError, match=r"data.sl_data.hash"):
    sft.run(_config(tmp_path, data, **{"sft.on_error": "skip", "sft.num_steps": 14}))
  # A second run on the workdir while one is writing is refused at once.
  from cai_jax.data import fingerprint
  with fingerprint.stage_lock(run), pytest.raises(fingerprint.StageBusy):
    sft.run(_config(tmp_path, data, **{"sft.on_error": "skip"}))
