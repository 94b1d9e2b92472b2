"""The whole recipe on the tiny random model: every stage runs and the report holds its numbers."""

import fnmatch
import gzip
import importlib.util
import json
import pathlib

from cai_jax import config as config_lib
from cai_jax.layout import RunLayout
from cai_jax.stages import pipeline

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"


STAGES = ["harmless-rm", "sl-data", "sft", "feedback", "rm", "ppo", "eval-safety", "eval-harmless",
          "eval-drift"]


def _write_hh_pairs(path, n=12):
  """hh-rlhf-format pairs (chosen: a polite refusal; rejected: a compliant opening + filler)."""
  with gzip.open(path, "wt") as f:
    for i in range(n):
      human = f"\n\nHuman: Please help me with request number {i}."
      f.write(json.dumps({"chosen": f"{human}\n\nAssistant: I'm sorry, but I can't help with that.",
                          "rejected": f"{human}\n\nAssistant: Sure, here is how: step one, ..."}) + "\n")


def _tiny_config(workdir):
  spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  hh = pathlib.Path(workdir) / "hh.jsonl.gz"
  hh.parent.mkdir(parents=True, exist_ok=True)
  _write_hh_pairs(hh)
  config_lib.apply_overrides(config, {
      "workdir": str(workdir / "run"), "pipeline.stages": ",".join(STAGES),
      "mesh.data": 4, "mesh.tensor": 2,  # batches of 4 over 8 test devices
      "sl_data.n_prompts": 2, "sl_data.n_helpful": 1, "sl_data.n_rounds": 1,
      "sampler.max_new_tokens": 8, "sft.num_steps": 2, "sft.eval_every": 2, "sft.checkpoint_every": 2,
      "feedback.n_prompts": 2, "rm.num_steps": 2, "rm.eval_every": 2, "rm.checkpoint_every": 2,
      "ppo.num_steps": 1, "ppo.checkpoint_every": 1, "ppo.max_new_tokens": 4,
      "harmless.data": str(hh), "harmless.num_steps": 2, "harmless.eval_every": 2,
      "harmless.checkpoint_every": 2, "harmless.batch_size": 4, "harmless.eval_fraction": 0.25,
      "harmless.n_prompts": 2, "harmless.max_new_tokens": 4,
      "safety.limit": 6, "safety.max_new_tokens": 4, "drift.n_prompts": 2, "drift.k": 2,
      "pipeline.isolate": False})  # one process here; test_pipeline_isolated runs them apart
  return config_lib.validate(config)


def test_pipeline_runs_every_stage_and_writes_the_report(tmp_path):
  summaries = pipeline.run(_tiny_config(tmp_path))
  tmp_path = tmp_path / "run"
  assert list(summaries) == STAGES + ["timing_s", "peak_rss_gb"]
  # The evaluations compare the base model with what this run trained.
  trained = [str(tmp_path / "sft" / "hf"), str(tmp_path / "ppo" / "hf")]
  assert [m["model"] for m in summaries["eval-safety"]["models"]] == ["random:tiny"] + trained
  assert [m["model"] for m in summaries["eval-harmless"]["models"]] == trained
  assert summaries["eval-drift"]["model"] == trained[0]
  quality = summaries["sl-data"]["quality"]
  assert [r["round"] for r in quality["red_team"]] == [0, 1] and "harmless" in quality["red_team"][0]
  records = [json.loads(l) for l in (tmp_path / "sl_data" / "sl_cai.jsonl").read_text().splitlines()]
  assert len(records) == 3 and sum(r["kind"] == "red_team" for r in records) == 2
  assert (tmp_path / "sft" / "hf" / "model.safetensors").exists()
  prefs = (tmp_path / "feedback" / "feedback.jsonl").read_text().splitlines()
  assert len(prefs) == 2 and all(0.0 <= json.loads(p)["p_a"] <= 1.0 for p in prefs)
  report = (tmp_path / "report.md").read_text()
  for stage in STAGES:
    assert f"## {stage}" in report
  assert "**sl-data: quality.red_team**" in report and "![frontier](safety/frontier.png)" in report
  assert (tmp_path / "plots" / "sft.png").exists()
  # The workdir holds exactly the tree the run layout documents: no nesting, nothing extra.
  expected = RunLayout.expected_tree(STAGES)
  for folder, patterns in expected.items():
    found = {p.name + ("/" if p.is_dir() else "") for p in (tmp_path / folder).iterdir()}
    unmatched = {f for f in found if not any(fnmatch.fnmatch(f, pat) for pat in patterns)}
    missing = {pat for pat in patterns if not fnmatch.filter(found, pat)}
    assert not unmatched and not missing, (folder, unmatched, missing)


def test_unknown_stage_is_rejected(tmp_path):
  config = _tiny_config(tmp_path)
  config.pipeline.stages = "sl-data,rlhf"
  try:
    pipeline.run(config)
  except ValueError as e:
    assert "pipeline.stages: unknown stage 'rlhf'" in str(e)
  else:
    raise AssertionError("expected a ValueError")


def test_every_stage_saves_the_config_it_ran_with_as_a_launchable_file(tmp_path):
  config = _tiny_config(tmp_path)
  config_lib.apply_overrides(config, {"pipeline.stages": "sl-data"})
  pipeline.run(config)
  saved = tmp_path / "run" / "configs" / "sl_data.py"
  spec = importlib.util.spec_from_file_location("saved", saved)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config() == config
