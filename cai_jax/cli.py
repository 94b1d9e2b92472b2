"""`python -m cai_jax <stage> --config experiments/x.py --config.a.b=c`.

Each stage is a function `run(config) -> dict` in its own module; this file
only maps stage names to them, parses the config and reports errors plainly.
"""

from __future__ import annotations

import importlib
import logging
import sys

# stage name -> "module:function". Each function takes the validated ConfigDict.
STAGES: dict[str, str] = {
    "pipeline": "cai_jax.pipeline:run",
    "info": "cai_jax.stages.info:run",
    "sl-data": "cai_jax.data.sl_cai:run",
    "generate": "cai_jax.generate:run",
    "feedback": "cai_jax.data.feedback:run",
    "rm": "cai_jax.train.reward:run",
    "eval-mc": "cai_jax.evals.multiple_choice:run",
    "eval-hhh": "cai_jax.evals.hhh:run",
    "ppo": "cai_jax.train.ppo_stage:run",
    "sft": "cai_jax.train.sft:run",
}


def _usage() -> str:
  return ("usage: python -m cai_jax <stage> --config experiments/<name>.py [--config.field=value ...]\n"
          f"stages: {', '.join(sorted(STAGES))}")


def load_config(argv: list[str]):
  """Parses --config and --config.x=y flags with ml_collections; validates the result."""
  from absl import flags
  from ml_collections import config_flags

  from cai_jax import config as config_lib

  fv = flags.FlagValues()
  # sys_argv: the override flags (--config.a.b=c) are found in it when the flag is defined;
  # without it they are looked for in sys.argv, which fails for load_config(argv) from Python.
  config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=fv,
                                  lock_config=True, sys_argv=["cai_jax"] + argv)
  try:
    fv(["cai_jax"] + argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise SystemExit(f"config error: {_explain_override_error(argv) or e}") from None
  if fv.config is None:
    raise SystemExit("config error: --config experiments/<name>.py is required\n" + _usage())
  try:
    return config_lib.validate(fv.config)
  except ValueError as e:
    raise SystemExit(f"config error: {e}") from None


def _explain_override_error(argv: list[str]) -> str | None:
  """Finds the --config.x.y flag that names no field, with a did-you-mean."""
  import importlib.util

  from cai_jax import config as config_lib

  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  if path is None:
    return None
  spec = importlib.util.spec_from_file_location("_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if arg.startswith("--config."):
      name = arg[len("--config."):].split("=", 1)[0]
      try:
        config_lib.apply_overrides(config, {name: config_lib.get_field(config, name)})
      except ValueError as e:
        return f"{arg}: {e}"
  return None


# Shorthand flags -> config fields (e.g. `eval-mc --data PATH`).
_SHORTHANDS = {"--data": "eval.data"}


def _shorthand_flags(argv: list[str]) -> list[str]:
  """Rewrites `--data PATH` / `--data=PATH` into `--config.eval.data=PATH`."""
  out, i = [], 0
  while i < len(argv):
    name, eq, value = argv[i].partition("=")
    if name in _SHORTHANDS:
      if not eq:
        if i + 1 >= len(argv):
          raise SystemExit(f"config error: {name} needs a value")
        value, i = argv[i + 1], i + 1
      out.append(f"--config.{_SHORTHANDS[name]}={value}")
    else:
      out.append(argv[i])
    i += 1
  return out


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("-"):
    print(_usage())
    raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
  stage, rest = argv[0], argv[1:]
  if stage not in STAGES:
    raise SystemExit(f"unknown stage {stage!r}\n" + _usage())
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S")
  config = load_config(_shorthand_flags(rest))
  module, fn = STAGES[stage].split(":")
  getattr(importlib.import_module(module), fn)(config)
