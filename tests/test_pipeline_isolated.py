"""The pipeline runs each stage in a process of its own and never skips a stage silently."""

import gzip
import importlib.util
import json
import pathlib

import pytest

from cai_jax import config as config_lib
from cai_jax.stages import pipeline

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"


def _config(tmp_path, stages, **overrides):
  spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {
      "workdir": str(tmp_path / "run"), "pipeline.stages": stages, "pipeline.isolate": True,
      "mesh.data": 4, "mesh.tensor": 2,  # batches of 4 over the 8 test devices
      "sl_data.n_prompts": 1, "sl_data.n_helpful": 1, "sl_data.n_rounds": 1,
      "sampler.max_new_tokens": 4, "sft.num_steps": 1, "sft.eval_every": 0,
      "sft.checkpoint_every": 1, "harmless.data": str(tmp_path / "absent.jsonl.gz"),
      "eval.hhh": str(tmp_path / "absent_hhh.jsonl"), **overrides})
  return config_lib.validate(config)


def test_each_stage_runs_in_its_own_process_and_reports_its_peak_memory(tmp_path, capsys):
  summaries = pipeline.run(_config(tmp_path, "sl-data,sft"))
  peaks = summaries["peak_rss_gb"]
  assert set(peaks) == {"sl-data", "sft", "max"}
  assert all(0.05 < peaks[s] < 20 for s in ("sl-data", "sft"))
  assert peaks["max"] == max(peaks["sl-data"], peaks["sft"])
  # Each child ran from the config the pipeline saved for it, and printed its own summary.
  assert summaries["sft"]["stage"] == "sft" and summaries["sft"]["steps"] == 1
  assert (tmp_path / "run" / "configs" / "sft.py").is_file()
  report = (tmp_path / "run" / "report.md").read_text()
  assert "peak RSS per stage (GB): sl-data" in report


def test_a_stage_without_its_public_data_is_skipped_loudly_with_the_enabling_setting(tmp_path, capsys):
  summaries = pipeline.run(_config(tmp_path, "harmless-rm,eval-hhh,eval-harmless",
                                   **{"pipeline.isolate": False}))
  for stage, setting in (("harmless-rm", "--config.harmless.data=PATH"),
                         ("eval-hhh", "--config.eval.hhh=PATH"),
                         ("eval-harmless", "--config.harmless.model=DIR")):
    assert setting in summaries[stage]["skipped"]
  report = (tmp_path / "run" / "report.md").read_text()
  assert report.count("SKIPPED") == 3
  err = capsys.readouterr().err
  assert "stage harmless-rm was skipped" in err and "stage eval-hhh was skipped" in err


def test_a_failing_stage_stops_the_pipeline_with_its_exit_code(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text("{not json\n")
  with pytest.raises(SystemExit) as e:
    pipeline.run(_config(tmp_path, "sl-data", **{"sl_data.prompts": str(bad)}))
  assert e.value.code not in (0, None)
  assert not (tmp_path / "run" / "report.md").exists()
