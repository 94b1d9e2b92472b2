"""`python -m cai_jax <stage> --config experiments/x.py[:variant] --config.a.b=c`.

The face of the package: parses the flags, loads and validates the locked
config, starts jax.distributed when config.distributed asks for it, and runs the
stage (`cai_jax.stages.run_stage(name, config)`, which first saves the config to
<workdir>/configs/<stage>.py). Config errors and bad input are reported plainly
(exit code 2), never as a traceback.

Exit codes: 0 done; 1 a bug (traceback); 2 a config error or bad input (a file, a
value, a path: one line naming it, no traceback; CAI_JAX_DEBUG=1 shows it); 3 (EXIT_PAUSED) a
training stage is paused for a person: the constitutional checkpoint saw the
policy drift past a threshold, saved the checkpoint and wrote <stage dir>/ALERT.txt,
or a rerun found that pause unacknowledged. Continue with the same command plus
--config.checkpoint.ack=<the alert id in ALERT.txt>.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

from cai_jax import stages


EXIT_PAUSED = 3  # train.loop.Paused: see the module doc


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
  arg = _config_arg(argv)
  if arg is None and any(a.startswith("--config.") for a in argv):
    raise SystemExit("config error: overrides (--config.a.b=c) need the experiment they change: "
                     "--config experiments/<name>.py is required\n" + _usage())
  if arg is not None and not pathlib.Path(arg.partition(":")[0]).is_file():
    raise SystemExit(f"config error: --config {arg}: no such experiment file")
  try:
    fv(["cai_jax"] + argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
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
    print(f"unknown stage {stage!r}\n" + _usage(), file=sys.stderr)
    raise SystemExit(2)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S")
  try:
    config = load_config(_shorthand_flags(rest))
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)  # a config error: the message alone, exit code 2
    raise SystemExit(2) from None
  from cai_jax.train.loop import Paused
  try:
    if start_distributed(config):  # a secondary host: process 0 prints the summary
      _silence_stdout()
    stages.run_stage(stage, config)
  except Paused as e:
    print(f"paused: {e}", file=sys.stderr)
    raise SystemExit(EXIT_PAUSED) from None
  except USER_ERRORS as e:
    if os.environ.get("CAI_JAX_DEBUG"):
      raise
    print(f"error: {_plain(e)}", file=sys.stderr)
    raise SystemExit(2) from None


# What a user can fix (a bad file, value or path), reported as one line with exit code 2;
# anything else is a bug and keeps its traceback (exit 1). CAI_JAX_DEBUG=1 shows every traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError)


def _plain(e: BaseException) -> str:
  """The exception's message (FileNotFoundError's "[Errno 2] ...: 'path'" form kept whole)."""
  return str(e) if str(e) else type(e).__name__


def start_distributed(config) -> bool:
  """Multi-host runs: starts jax.distributed from config.distributed before any JAX
  computation (every stage, the same program on every host), and keeps INFO logs to
  process 0 so N hosts do not print N copies; warnings and errors still come from every
  host. Returns whether this process is a secondary host (process index > 0), whose
  stdout `main` silences: the stage's JSON summary line comes from process 0."""
  from cai_jax import sharding

  d = config.distributed
  if not sharding.maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id):
    return False
  import jax
  if jax.process_index() == 0:
    return False
  logging.getLogger().setLevel(logging.WARNING)
  return True


def _silence_stdout() -> None:
  """Points this process's stdout at /dev/null, at the file descriptor: the collectives
  library (gloo) prints there from C++ too."""
  sys.stdout.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)
