"""A PPO run killed with SIGKILL and restarted ends with bit-identical parameters.

Three processes run the `ppo` stage (experiments/rl_cai.py:tiny, a checkpoint
every iteration): one uninterrupted, one killed once it has saved two
checkpoints, and one that resumes the killed run's workdir. The rollout key,
the prompt choice, the minibatch order, the KL coefficient and the reward
statistics all come back from the checkpoint, so the two final states match.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
N_STEPS = 8


OVERRIDES = {"ppo.num_steps": N_STEPS, "ppo.checkpoint_every": 1, "ppo.reward_norm": "running",
             "ppo.kl_controller": "adaptive", "ppo.kl_target": 1.0, "ppo.kl_horizon": 64,
             "ppo.value_head": "separate", "ppo.epochs": 2}


def _command(workdir: pathlib.Path) -> list[str]:
  return ([sys.executable, "-m", "cai_jax", "ppo", "--config", "experiments/rl_cai.py:tiny",
           f"--config.workdir={workdir}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def _config(workdir: pathlib.Path):
  import importlib.util

  from cai_jax import config as config_lib

  spec = importlib.util.spec_from_file_location("rl_cai", REPO / "experiments" / "rl_cai.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {"workdir": str(workdir), **OVERRIDES})
  return config_lib.validate(config)


def _env(tmp_path: pathlib.Path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  # The three processes share compiled programs (only the first one compiles).
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / "ppo" / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _final_state(workdir: pathlib.Path):
  from cai_jax.stages import ppo as ppo_stage
  from cai_jax.train import checkpoint

  state, shardings, _ = ppo_stage.build(_config(workdir))
  restored = checkpoint.Checkpointer(workdir / "ppo" / "checkpoints").restore_latest(state, shardings)
  assert restored is not None
  return restored


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_command(full), cwd=REPO, env=_env(tmp_path), check=True, capture_output=True)

  proc = subprocess.Popen(_command(killed), cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  while proc.poll() is None and len(_checkpoint_steps(killed)) < 2:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert max(_checkpoint_steps(killed)) < N_STEPS

  subprocess.run(_command(killed), cwd=REPO, env=_env(tmp_path), check=True, capture_output=True)
  (state_a, extra_a), (state_b, extra_b) = _final_state(full), _final_state(killed)
  assert int(state_a.step) == int(state_b.step) == N_STEPS
  leaves_a, leaves_b = jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(state_a.opt_state), jax.tree.leaves(state_b.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert extra_a["ppo"] == extra_b["ppo"]  # KL coefficient and reward statistics
