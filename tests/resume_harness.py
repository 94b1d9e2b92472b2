"""Kill/resume harness: a stage run as a subprocess (`python -m cai_jax <stage> ...`) on
the tiny model, SIGKILLed once its files show progress, then rerun on the same workdir and
compared by the test with an unbroken run.

The processes share one JAX compilation cache, so only the first of them compiles.
Kill points are drawn from a seeded generator: a failure names the point, and a rerun of
the test reproduces it.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

REPO = pathlib.Path(__file__).resolve().parents[1]


def env(cache_dir: pathlib.Path) -> dict[str, str]:
  """The environment of a stage process: 8 fake CPU devices and a shared compilation cache."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return e


def command(stage: str, config: str, workdir: pathlib.Path,
            overrides: Mapping[str, object]) -> list[str]:
  """`python -m cai_jax <stage> --config <config> --config.workdir=<workdir> --config.k=v ...`."""
  return ([sys.executable, "-m", "cai_jax", stage, "--config", config, f"--config.workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def run(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
        cache_dir: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs the stage to the end; an AssertionError with its stderr's tail when it fails."""
  proc = subprocess.run(command(stage, config, workdir, overrides), cwd=REPO, env=env(cache_dir),
                        capture_output=True, text=True)
  assert proc.returncode == 0, f"{stage} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
  return proc


def run_and_kill(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
                 cache_dir: pathlib.Path, progressed: Callable[[], bool], what: str = "",
                 poll_s: float = 0.01) -> None:
  """Starts the stage and SIGKILLs it as soon as `progressed()` is true (polled every poll_s);
  fails when the stage ends first (the kill point was past its last write)."""
  # stderr goes to a file: a pipe nobody reads would fill up and stall the stage.
  log_path = workdir.parent / f"{workdir.name}.killed.stderr"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command(stage, config, workdir, overrides), cwd=REPO,
                            env=env(cache_dir), stdout=subprocess.DEVNULL, stderr=log)
    try:
      while proc.poll() is None and not progressed():
        time.sleep(poll_s)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=600)
    finally:
      if proc.poll() is None:
        proc.kill()
  assert proc.returncode == -signal.SIGKILL, (
      f"{stage} ended ({proc.returncode}) before it could be killed {what}:\n"
      f"{log_path.read_text()[-3000:]}")


def kill_points(seed: int, low: int, high: int, k: int) -> list[int]:
  """k distinct kill points in [low, high], drawn from a seeded generator, ascending."""
  return sorted(random.Random(seed).sample(range(low, high + 1), k))


def checkpoint_steps(directory: pathlib.Path) -> list[int]:
  """The steps saved in an orbax checkpoints folder (finished saves only)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def complete_lines(path: pathlib.Path) -> int:
  """Complete (newline-ended) lines of a file that another process is appending to."""
  try:
    return path.read_bytes().count(b"\n")
  except FileNotFoundError:
    return 0


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
