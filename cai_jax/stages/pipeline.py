"""Stage `pipeline`: the whole CAI recipe end to end, then a report.

  harmless-rm -> sl-data -> sft -> feedback -> rm -> ppo (or dpo in place of rm + ppo)
    -> eval-hhh -> eval-safety -> eval-harmless -> eval-drift -> report

All stages share the one workdir; each writes its own folder of the run layout
(layout.py) and reads the previous stages' files from there, exactly as if it
had been launched alone, so rerunning the pipeline resumes each stage from what
it already wrote. `pipeline.stages` picks a subset (kept in the fixed order).
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import sys
import time

from cai_jax import report
from cai_jax import stages as registry
from cai_jax.stages import common

log = logging.getLogger(__name__)


def selected(spec: str) -> list[str]:
  """pipeline.stages ("" = all) as stage names in pipeline order."""
  names = [s.strip() for s in spec.split(",") if s.strip()] or list(registry.PIPELINE_ORDER)
  unknown = [s for s in names if s not in registry.PIPELINE_ORDER]
  if unknown:
    raise ValueError(f"pipeline.stages: unknown stage {unknown[0]!r}; expected some of "
                     f"{registry.PIPELINE_ORDER}")
  return [s for s in registry.PIPELINE_ORDER if s in names]


def with_run_inputs(config, name: str, names: list[str], layout):
  """The evaluation stages measure what this run trained, unless the config says otherwise:
  eval-hhh also scores the reward model; eval-safety and eval-harmless compare the base
  model with the SFT and PPO (or DPO) policies."""
  trained = ",".join(str(p) for stage, p in (("sft", layout.sft_export), ("ppo", layout.ppo_export),
                                             ("dpo", layout.dpo_export))
                     if stage in names)
  if name == "eval-hhh" and not config.eval.reward_model and "rm" in names:
    config.eval.reward_model = str(layout.reward_model)
  elif name == "eval-safety" and not config.safety.models and trained:
    config.safety.models = trained
  elif name == "eval-harmless" and not config.harmless.policy and trained:
    config.harmless.policy = trained
  return config


def _peak_rss_gb() -> float:
  """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1e9 if sys.platform == "darwin" else 1e6)


def _jsonable(summary) -> dict:
  return json.loads(json.dumps(summary if isinstance(summary, dict) else {"result": summary},
                               default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run(config) -> dict:
  """Runs the configured stages in order; writes <workdir>/report.md with plots."""
  layout = common.layout(config)
  layout.root.mkdir(parents=True, exist_ok=True)
  names = selected(config.pipeline.stages)
  summaries: dict[str, dict] = {}
  timings: dict[str, float] = {}
  start = time.time()
  for i, name in enumerate(names, 1):
    log.info("pipeline: [%d/%d] %s -> %s", i, len(names), name, layout.stage_dir(name))
    stage_config = with_run_inputs(copy.deepcopy(config), name, names, layout)
    t0 = time.time()
    summaries[name] = _jsonable(registry.get(name)(stage_config))
    timings[name] = round(time.time() - t0, 1)
    log.info("pipeline: %s done in %.0f s; peak RSS so far %.1f GB", name, timings[name],
             _peak_rss_gb())
  summaries["timing_s"] = {**timings, "total": round(time.time() - start, 1)}
  out = report.write_report(layout, summaries, title="cai_jax pipeline report",
                            notes=[f"model: {config.model.source}", f"stages: {', '.join(names)}"])
  print(out.read_text())
  print(f"report: {out}")
  return summaries
