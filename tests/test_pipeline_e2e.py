"""The whole recipe on the tiny random model: every stage runs and the report holds its numbers."""

import importlib.util
import json
import pathlib

from cai_jax import config as config_lib
from cai_jax.layout import RunLayout
from cai_jax.stages import pipeline

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"


def _tiny_config(workdir):
  spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {
      "workdir": str(workdir), "pipeline.stages": "sl-data,sft,feedback,rm,ppo",
      "mesh.data": 4, "mesh.tensor": 2,  # batches of 4 over 8 test devices
      "sl_data.n_prompts": 2, "sl_data.n_helpful": 1, "sl_data.n_rounds": 1,
      "sampler.max_new_tokens": 8, "sft.num_steps": 2, "sft.eval_every": 2, "sft.checkpoint_every": 2,
      "feedback.n_prompts": 2, "rm.num_steps": 2, "rm.eval_every": 2, "rm.checkpoint_every": 2,
      "ppo.num_steps": 1, "ppo.checkpoint_every": 1, "ppo.max_new_tokens": 4})
  return config_lib.validate(config)


def test_pipeline_runs_every_stage_and_writes_the_report(tmp_path):
  summaries = pipeline.run(_tiny_config(tmp_path))
  assert list(summaries) == ["sl-data", "sft", "feedback", "rm", "ppo", "timing_s"]
  records = [json.loads(l) for l in (tmp_path / "sl_data" / "sl_cai.jsonl").read_text().splitlines()]
  assert len(records) == 3 and sum(r["kind"] == "red_team" for r in records) == 2
  assert (tmp_path / "sft" / "hf" / "model.safetensors").exists()
  prefs = (tmp_path / "feedback" / "feedback.jsonl").read_text().splitlines()
  assert len(prefs) == 2 and all(0.0 <= json.loads(p)["p_a"] <= 1.0 for p in prefs)
  report = (tmp_path / "report.md").read_text()
  for stage in ("sl-data", "sft", "feedback", "rm", "ppo"):
    assert f"## {stage}" in report
  assert (tmp_path / "plots" / "sft.png").exists()
  # The workdir holds exactly the tree the run layout documents: no nesting, nothing extra.
  expected = RunLayout.expected_tree(["sl-data", "sft", "feedback", "rm", "ppo"])
  found = {folder: {p.name + ("/" if p.is_dir() else "") for p in (tmp_path / folder).iterdir()}
           for folder in expected}
  assert found == expected


def test_unknown_stage_is_rejected(tmp_path):
  config = _tiny_config(tmp_path)
  config.pipeline.stages = "sl-data,dpo"
  try:
    pipeline.run(config)
  except ValueError as e:
    assert "pipeline.stages: unknown stage 'dpo'" in str(e)
  else:
    raise AssertionError("expected a ValueError")
