"""The stages: one module per command, each a short `run(config) -> summary dict`.

Stages are the only code that reads the ConfigDict; they turn it into typed
calls on the library (models, sampling, cai, data, train, evals). `cli.py`
parses, loads the config and calls `get(name)(config)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# command name -> module under cai_jax.stages (each has `run(config) -> dict`).
STAGES: dict[str, str] = {
    "info": "info",
    "generate": "generate",
    "sl-data": "sl_data",
    "sft": "sft",
    "feedback": "feedback",
    "rm": "rm",
    "ppo": "ppo",
    "dpo": "dpo",
    "eval-mc": "eval_mc",
    "eval-hhh": "eval_hhh",
    "eval-refusal": "eval_refusal",
    "eval-safety": "eval_safety",
    "harmless-rm": "harmless_rm",
    "eval-harmless": "eval_harmless",
    "eval-drift": "eval_drift",
    "pipeline": "pipeline",
    "constitution": "constitution",
    "audit": "audit",
    "sweep": "sweep",
    "plan": "plan",
}

# The CAI recipe and its measurements, in the order the pipeline runs them. The
# harmlessness evaluator is trained first (from the base model, on human pairs) so that
# sl-data can score its revision rounds with it.
PIPELINE_ORDER = ("harmless-rm", "sl-data", "sft", "feedback", "rm", "ppo", "dpo", "eval-hhh",
                  "eval-safety", "eval-harmless", "eval-drift")


def run_stage(name: str, config) -> dict:
  """Runs stage `name` after saving the config it runs with to <workdir>/configs/<name>.py
  (a launchable experiment file: the record of every setting, loss names included; written
  by process 0 of a multi-host run)."""
  from cai_jax import config as config_lib
  from cai_jax.layout import RunLayout

  from cai_jax.stages import common

  import jax

  fn = get(name)
  common.check_workdir(config.workdir)  # a workdir that is a file fails here, naming it
  if jax.process_index() != 0:  # process 0 records the config of a multi-host run
    return fn(config)
  path = RunLayout(config.workdir).config_file(name)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(config_lib.as_experiment(config, f"The config of stage {name}"))
  tmp.replace(path)
  return fn(config)


def get(name: str) -> Callable:
  """The `run` function of stage `name`."""
  if name not in STAGES:
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(sorted(STAGES))}")
  return importlib.import_module(f"cai_jax.stages.{STAGES[name]}").run
