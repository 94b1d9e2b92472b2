"""`python -m cai_jax <stage> --config experiments/x.py[:variant] --config.a.b=c`.

The face of the package: parses the flags, loads and validates the locked
config, and calls the stage (`cai_jax.stages.get(name)(config)`). Config errors
are reported plainly (exit code 2), never as a traceback.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from cai_jax import stages


def _usage() -> str:
  return ("usage: python -m cai_jax <stage> --config experiments/<name>.py [--config.field=value ...]\n"
          f"stages: {', '.join(sorted(stages.STAGES))}")


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


def _config_arg(argv: list[str]) -> str | None:
  """The --config value ("experiments/x.py" or "experiments/x.py:variant"), if given."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  return path


def _load_experiment(arg: str):
  """get_config(variant) of the experiment file named by a --config value."""
  import importlib.util

  path, _, variant = arg.partition(":")
  if not pathlib.Path(path).is_file():
    raise ValueError(f"{path}: no such experiment file")
  spec = importlib.util.spec_from_file_location("_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _explain_override_error(argv: list[str]) -> str | None:
  """The plain reason a config failed to load: the experiment file's own error (unknown
  variant, misspelt field), or the --config.x.y flag that names no field, with a did-you-mean."""
  from cai_jax import config as config_lib

  arg = _config_arg(argv)
  if arg is None:
    return None
  try:
    config = _load_experiment(arg)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    return str(e.args[0]) if e.args else str(e)
  for a in argv:
    if a.startswith("--config."):
      name = a[len("--config."):].split("=", 1)[0]
      try:
        config_lib.apply_overrides(config, {name: config_lib.get_field(config, name)})
      except ValueError as e:
        return f"{a}: {e}"
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
  if stage not in stages.STAGES:
    raise SystemExit(f"unknown stage {stage!r}\n" + _usage())
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S")
  try:
    config = load_config(_shorthand_flags(rest))
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)  # a config error: the message alone, exit code 2
    raise SystemExit(2) from None
  stages.get(stage)(config)
