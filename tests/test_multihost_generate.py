"""Generation on two hosts writes exactly the records of one host.

Stage `feedback` runs on the tiny model as one process (8 CPU devices) and as two
jax.distributed processes on 127.0.0.1 (4 CPU devices each): each process answers and
labels its share of the prompts (prompt i on host i % 2), writes its own shard, and
process 0 merges the shards after a barrier. The two feedback.jsonl files must be equal
byte for byte, and no shard may be left behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FEEDBACK = ["--config.feedback.n_prompts=6", "--config.sampler.batch_size=2",
            "--config.sampler.max_new_tokens=8", "--config.feedback.n_few_shot=0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(cache))
  return env


def _command(workdir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, "-m", "cai_jax", "feedback", "--config", "experiments/tiny.py",
          f"--config.workdir={workdir}", *FEEDBACK, *extra]


def _run_two_processes(workdir: pathlib.Path, cache: pathlib.Path) -> list[str]:
  """Both processes of a two-host run; their stdout (process 0's last line: the summary)."""
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _command(workdir, "--config.distributed.num_processes=2",
               f"--config.distributed.coordinator_address={address}",
               f"--config.distributed.process_id={k}"),
      cwd=REPO, env=_env(4, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for k in range(2)]
  try:
    outputs = [p.communicate(timeout=240) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("the two feedback processes did not finish in 240 s")
  for k, (p, (_, log)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {k} failed ({p.returncode}):\n{log[-3000:]}"
  return [out for out, _ in outputs]


def test_feedback_on_two_hosts_writes_the_records_of_one(tmp_path):
  cache = tmp_path / "jax_cache"
  one = tmp_path / "one"
  proc = subprocess.run(_command(one), cwd=REPO, env=_env(8, cache), capture_output=True,
                        text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = (one / "feedback" / "feedback.jsonl").read_text()
  assert expected.count("\n") == 6

  two = tmp_path / "two"
  first, _ = _run_two_processes(two, cache)  # the other host's stdout is silenced (cli.py)
  summary = json.loads(first.strip().splitlines()[-1])
  # Process 0 labelled only its 3 of the 6 prompts, so the other 3 are host 1's.
  assert (summary["hosts"], summary["new_records"]) == (2, 3)
  assert (two / "feedback" / "feedback.jsonl").read_text() == expected
  assert sorted(p.name for p in (two / "feedback").iterdir()) == [
      "feedback.jsonl", "feedback.settings.json"]
