"""Multi-process harness: one CLI stage run as N local JAX processes, a CPU "pod".

    runs = multiprocess.run("sft", "experiments/tiny.py", workdir, overrides, cache_dir)
    multiprocess.run_and_kill("sft", ..., progressed=lambda: ...)   # SIGKILL every process
    multiprocess.run("sft", ...)                                      # the same command resumes

Every process runs `python -m cai_jax <stage> --config <config> --config.workdir=<workdir>
--config.k=v ... --config.distributed.num_processes=N
--config.distributed.coordinator_address=127.0.0.1:<port> --config.distributed.process_id=<k>`
with `devices_per_process` fake CPU devices (XLA_FLAGS), so two processes of 4 devices
make one 8-device mesh spanning both, joined by jax.distributed (gloo collectives on CPU).
They share the workdir, as hosts of a pod share a bucket, and one JAX compilation cache.
Each process's stdout and stderr go to files beside the workdir (a pipe that nobody reads
would fill up and stall it): <workdir>.p<k>.out / .err, the newest run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ProcessRun:
  """One finished process of a multi-process run."""

  process_id: int
  returncode: int
  stdout: str
  stderr: str

  def summary(self) -> dict:
    """The stage's JSON summary (the last stdout line); {} when the process printed none."""
    lines = [line for line in self.stdout.splitlines() if line.strip()]
    if not lines:
      return {}
    try:
      return json.loads(lines[-1])
    except json.JSONDecodeError:
      return {}


def free_port() -> int:
  """A TCP port nobody listens on now (for the jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(cache_dir: pathlib.Path, devices: int) -> dict[str, str]:
  """A process's environment: `devices` fake CPU devices and the shared compilation cache."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return e


def command(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
            process_id: int = 0, n_processes: int = 1, port: int = 0) -> list[str]:
  """The CLI command of process `process_id` of `n_processes` (no distributed flags when 1)."""
  argv = ([sys.executable, "-m", "cai_jax", stage, "--config", config, f"--config.workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])
  if n_processes > 1:
    argv += [f"--config.distributed.num_processes={n_processes}",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             f"--config.distributed.process_id={process_id}"]
  return argv


def _log_paths(workdir: pathlib.Path, k: int) -> tuple[pathlib.Path, pathlib.Path]:
  return (workdir.parent / f"{workdir.name}.p{k}.out", workdir.parent / f"{workdir.name}.p{k}.err")


def launch(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
           cache_dir: pathlib.Path, n_processes: int = 2,
           devices_per_process: int = 4) -> list[subprocess.Popen]:
  """Starts the stage in `n_processes` processes (one coordinator port); returns them running."""
  port = free_port()
  procs = []
  for k in range(n_processes):
    out, err = _log_paths(workdir, k)
    with open(out, "w") as fo, open(err, "w") as fe:  # the child keeps its own descriptors
      procs.append(subprocess.Popen(
          command(stage, config, workdir, overrides, k, n_processes, port), cwd=REPO,
          env=env(cache_dir, devices_per_process), stdout=fo, stderr=fe))
  return procs


def _stop(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait(timeout=60)


def wait(procs: list[subprocess.Popen], workdir: pathlib.Path, timeout_s: float = 300.0
         ) -> list[ProcessRun]:
  """Waits for every process; when one fails, the others are killed (a lone survivor would
  wait for its peer in a collective forever). Returns them in process order."""
  deadline = time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
        break
      time.sleep(0.05)
  finally:
    _stop(procs)
  runs = []
  for k, p in enumerate(procs):
    out, err = _log_paths(workdir, k)
    runs.append(ProcessRun(k, p.returncode, out.read_text(), err.read_text()))
  return runs


def run(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
        cache_dir: pathlib.Path, n_processes: int = 2, devices_per_process: int = 4,
        timeout_s: float = 300.0) -> list[ProcessRun]:
  """Runs the stage to the end in every process; an AssertionError naming the failed process
  and its stderr's tail when one fails (or all are still running after timeout_s)."""
  procs = launch(stage, config, workdir, overrides, cache_dir, n_processes, devices_per_process)
  runs = wait(procs, workdir, timeout_s)
  # Every process's tail: the first to fail is often not the first to exit (a host whose
  # peer died waits in a collective until it times out).
  assert all(r.returncode == 0 for r in runs), "\n".join(
      f"--- {stage} process {r.process_id} of {n_processes}: exit {r.returncode}\n"
      f"{r.stderr[-2500:]}" for r in runs)
  return runs


def run_and_kill(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
                 cache_dir: pathlib.Path, progressed: Callable[[], bool], what: str = "",
                 n_processes: int = 2, devices_per_process: int = 4, poll_s: float = 0.01,
                 timeout_s: float = 300.0) -> None:
  """Starts the stage in every process and SIGKILLs all of them as soon as `progressed()`
  is true (polled every poll_s), as a preempted pod loses all its hosts at once; fails when
  a process ended first (the kill point was past the run's last write)."""
  procs = launch(stage, config, workdir, overrides, cache_dir, n_processes, devices_per_process)
  deadline = time.monotonic() + timeout_s
  try:
    while (all(p.poll() is None for p in procs) and not progressed()
           and time.monotonic() < deadline):
      time.sleep(poll_s)
  finally:
    _stop(procs)
  for k, p in enumerate(procs):
    assert p.returncode == -signal.SIGKILL, (
        f"{stage} process {k} ended ({p.returncode}) before it could be killed {what}:\n"
        f"{_log_paths(workdir, k)[1].read_text()[-3000:]}")


def run_single(stage: str, config: str, workdir: pathlib.Path, overrides: Mapping[str, object],
               cache_dir: pathlib.Path, devices: int = 8, timeout_s: float = 300.0) -> ProcessRun:
  """The same stage in one process with `devices` fake devices: the reference run."""
  out, err = _log_paths(workdir, 0)
  with open(out, "w") as fo, open(err, "w") as fe:
    proc = subprocess.Popen(command(stage, config, workdir, overrides), cwd=REPO,
                            env=env(cache_dir, devices), stdout=fo, stderr=fe)
  runs = wait([proc], workdir, timeout_s)
  assert runs[0].returncode == 0, f"{stage} (one process) failed:\n{runs[0].stderr[-4000:]}"
  return runs[0]
