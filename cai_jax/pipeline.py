"""Stage `pipeline`: the whole CAI recipe end to end, then a report.

  sl-data -> sft -> feedback -> rm -> ppo -> eval-hhh -> report

Every stage runs with its own workdir under `config.workdir` (sl_data/, sft/,
feedback/, rm/, ppo/, eval/) and reads the previous stage's files from there,
exactly as if it had been launched alone; rerunning the pipeline resumes each
stage from what it already wrote. `pipeline.stages` picks a subset.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import pathlib
import resource
import sys
import time

from cai_jax import config as config_lib
from cai_jax import report

log = logging.getLogger(__name__)

ORDER = ("sl-data", "sft", "feedback", "rm", "ppo", "eval-hhh")


def stage_overrides(root: pathlib.Path) -> dict[str, dict[str, object]]:
  """Per stage: the config fields that point it at its own workdir and its inputs."""
  sft_export = str(root / "sft" / "hf")
  return {
      "sl-data": {"workdir": str(root / "sl_data")},
      "sft": {"workdir": str(root / "sft"), "sft.data": str(root / "sl_data" / "sl_cai.jsonl"),
              "sft.export_hf": sft_export},
      "feedback": {"workdir": str(root / "feedback"), "feedback.policy": sft_export},
      "rm": {"workdir": str(root / "rm"), "rm.ai_data": str(root / "feedback" / "feedback.jsonl")},
      "ppo": {"workdir": str(root / "ppo"), "ppo.policy": sft_export,
              "ppo.reward_model": str(root / "rm")},
      "eval-hhh": {"workdir": str(root / "eval"), "eval.reward_model": str(root / "rm")},
  }


def _stage_fn(name: str):
  from cai_jax.cli import STAGES
  module, fn = STAGES[name].split(":")
  return getattr(importlib.import_module(module), fn)


def _peak_rss_gb() -> float:
  """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1e9 if sys.platform == "darwin" else 1e6)


def _jsonable(summary) -> dict:
  return json.loads(json.dumps(summary if isinstance(summary, dict) else {"result": summary},
                               default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run(config) -> dict:
  """Runs the configured stages in order; writes <workdir>/report.md with plots."""
  root = pathlib.Path(config.workdir)
  root.mkdir(parents=True, exist_ok=True)
  stages = [s.strip() for s in config.pipeline.stages.split(",") if s.strip()] or list(ORDER)
  unknown = [s for s in stages if s not in ORDER]
  if unknown:
    raise ValueError(f"pipeline.stages: unknown stage {unknown[0]!r}; expected some of {ORDER}")
  overrides = stage_overrides(root)
  summaries: dict[str, dict] = {}
  timings: dict[str, float] = {}
  start = time.time()
  for i, name in enumerate(stages, 1):
    log.info("pipeline: [%d/%d] %s", i, len(stages), name)
    stage_config = copy.deepcopy(config)
    config_lib.apply_overrides(stage_config, overrides[name])
    config_lib.validate(stage_config)
    t0 = time.time()
    summaries[name] = _jsonable(_stage_fn(name)(stage_config))
    timings[name] = round(time.time() - t0, 1)
    log.info("pipeline: %s done in %.0f s; peak RSS so far %.1f GB", name, timings[name],
             _peak_rss_gb())
  summaries["timing_s"] = {**timings, "total": round(time.time() - start, 1)}
  out = report.write_report(root, summaries, title="cai_jax pipeline report",
                            notes=[f"model: {config.model.source}", f"stages: {', '.join(stages)}"])
  print(out.read_text())
  print(f"report: {out}")
  return summaries
