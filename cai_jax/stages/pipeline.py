"""Stage `pipeline`: the whole CAI recipe end to end, then a report.

  harmless-rm -> sl-data -> sft -> feedback -> rm -> ppo (or dpo in place of rm + ppo)
    -> eval-hhh -> eval-safety -> eval-harmless -> eval-drift -> report

All stages share the one workdir; each writes its own folder of the run layout
(layout.py) and reads the previous stages' files from there, exactly as if it
had been launched alone, so rerunning the pipeline resumes each stage from what
it already wrote. `pipeline.stages` picks a subset (kept in the fixed order).

With pipeline.isolate (the default) each stage runs in a process of its own from
its saved config (<workdir>/configs/<stage>.py), so the run's peak memory is the
largest stage's; the report lists every stage's peak RSS and wall time. A stage
whose inputs are missing (a stage module's `missing_inputs(config)`: the public
data sets a user must bring) is skipped loudly: the log, stderr and the report
name it, with the reason and the setting that enables it.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import resource
import subprocess
import sys
import time

from cai_jax import config as config_lib
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
  return _rss_gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _rss_gb(maxrss: int) -> float:
  return round(maxrss / (1e9 if sys.platform == "darwin" else 1e6), 2)


def _jsonable(summary) -> dict:
  return json.loads(json.dumps(summary if isinstance(summary, dict) else {"result": summary},
                               default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def missing_inputs(name: str, config) -> str | None:
  """Why stage `name` cannot run with this config (a stage module's `missing_inputs`), or None."""
  module = importlib.import_module(f"cai_jax.stages.{registry.STAGES[name]}")
  check = getattr(module, "missing_inputs", None)
  return check(config) if check else None


# glibc keeps freed heap memory for reuse unless told to hand large blocks back: XLA's CPU
# runtime frees and allocates large temporaries every step, and the kept pages count in the
# stage's RSS (PPO on SmolLM2-135M: 5.15 -> 4.48 GB, 139 -> 158 s). A value the user set wins.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def stage_env() -> dict[str, str]:
  """The environment of a stage's process: this one's, plus MALLOC_ENV where unset."""
  return {**MALLOC_ENV, **os.environ}


def run_isolated(name: str, config, layout) -> tuple[dict, float]:
  """Runs one stage as `python -m cai_jax <stage> --config <its saved config>` in a process
  of its own, so each stage starts with an empty heap (the pipeline's peak memory is the
  largest stage's, not their sum). Returns (summary, the child's peak RSS in GB)."""
  path = layout.config_file(name)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config_lib.as_experiment(config, f"The config of stage {name}"))
  cmd = [sys.executable, "-m", "cai_jax", name, "--config", str(path)]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=stage_env())
  last = ""
  for line in proc.stdout:  # the stage's stdout, echoed; its last line is the JSON summary
    sys.stdout.write(line)
    last = line.strip() or last
  proc.stdout.close()
  _, status, usage = os.wait4(proc.pid, 0)
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    raise StageFailed(name, code, f"stage {name} exited with code {code} (its config: {path}; "
                      "rerun the pipeline to resume from what the stages wrote)")
  try:
    summary = json.loads(last)
  except json.JSONDecodeError:
    raise StageFailed(name, 1, f"stage {name} ended without its JSON summary line") from None
  return summary, _rss_gb(usage.ru_maxrss)


class StageFailed(RuntimeError):
  """A stage run by the pipeline in its own process failed; `code` is its exit code."""

  def __init__(self, stage: str, code: int, message: str):
    super().__init__(message)
    self.stage, self.code = stage, code


def run(config) -> dict:
  """Runs the configured stages in order; writes <workdir>/report.md with plots."""
  layout = common.layout(config)
  layout.root.mkdir(parents=True, exist_ok=True)
  names = selected(config.pipeline.stages)
  layout.config_file("pipeline").parent.mkdir(parents=True, exist_ok=True)
  layout.config_file("pipeline").write_text(config_lib.as_experiment(config, "The pipeline's config"))
  isolate = config.pipeline.isolate
  summaries: dict[str, dict] = {}
  timings: dict[str, float] = {}
  peaks: dict[str, float] = {}
  skipped: dict[str, str] = {}
  start = time.time()
  for i, name in enumerate(names, 1):
    stage_config = with_run_inputs(copy.deepcopy(config), name, names, layout)
    reason = missing_inputs(name, stage_config)
    if reason:
      log.warning("pipeline: [%d/%d] %s SKIPPED: %s", i, len(names), name, reason)
      skipped[name] = reason
      summaries[name] = {"skipped": reason}
      continue
    log.info("pipeline: [%d/%d] %s -> %s%s", i, len(names), name, layout.stage_dir(name),
             " (own process)" if isolate else "")
    t0 = time.time()
    if isolate:
      try:
        summary, peaks[name] = run_isolated(name, stage_config, layout)
      except StageFailed as e:
        print(f"pipeline: {e}", file=sys.stderr)  # the stage printed its own error above
        raise SystemExit(e.code) from None
    else:
      summary = registry.run_stage(name, stage_config)
      peaks[name] = _peak_rss_gb()  # in one process: the peak so far, not this stage's own
    summaries[name] = _jsonable(summary)
    timings[name] = round(time.time() - t0, 1)
    log.info("pipeline: %s done in %.0f s; peak RSS %.2f GB%s", name, timings[name], peaks[name],
             "" if isolate else " (whole process so far)")
  summaries["timing_s"] = {**timings, "total": round(time.time() - start, 1)}
  summaries["peak_rss_gb"] = {**peaks, "max": max(peaks.values(), default=0.0)}
  notes = [f"model: {config.model.source}", f"stages: {', '.join(n for n in names if n not in skipped)}",
           "peak RSS per stage (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items())
           + ("" if isolate else " (one process: cumulative)")]
  notes += [f"SKIPPED {k}: {v}" for k, v in skipped.items()]
  out = report.write_report(layout, summaries, title="cai_jax pipeline report", notes=notes)
  print(out.read_text())
  for k, v in skipped.items():
    print(f"pipeline: stage {k} was skipped: {v}", file=sys.stderr)
  print(f"report: {out}")
  return summaries
