"""A PPO run killed with SIGKILL and restarted ends with bit-identical parameters.

Three processes run the `ppo` stage (experiments/rl_cai.py:tiny, a checkpoint
every iteration): one uninterrupted, one killed once it has saved two
checkpoints, and one that resumes the killed run's workdir. The rollout key,
the prompt choice, the minibatch order, the KL coefficient and the reward
statistics all come back from the checkpoint, so the two final states match.
"""

import pathlib

import jax
import numpy as np

import resume_harness as harness

REPO = harness.REPO
CONFIG = "experiments/rl_cai.py:tiny"
N_STEPS = 8


OVERRIDES = {"ppo.num_steps": N_STEPS, "ppo.checkpoint_every": 1, "ppo.reward_norm": "running",
             "ppo.kl_controller": "adaptive", "ppo.kl_target": 1.0, "ppo.kl_horizon": 64,
             "ppo.value_head": "separate", "ppo.epochs": 2}


def _config(workdir: pathlib.Path):
  import importlib.util

  from cai_jax import config as config_lib

  spec = importlib.util.spec_from_file_location("rl_cai", REPO / "experiments" / "rl_cai.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {"workdir": str(workdir), **OVERRIDES})
  return config_lib.validate(config)


def _final_state(workdir: pathlib.Path):
  from cai_jax.stages import ppo as ppo_stage
  from cai_jax.train import checkpoint

  state, shardings, _ = ppo_stage.build(_config(workdir))
  restored = checkpoint.Checkpointer(workdir / "ppo" / "checkpoints").restore_latest(state, shardings)
  assert restored is not None
  return restored


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  full, killed, cache = tmp_path / "full", tmp_path / "killed", tmp_path / "jax_cache"
  harness.run("ppo", CONFIG, full, OVERRIDES, cache)
  checkpoints = killed / "ppo" / "checkpoints"
  harness.run_and_kill("ppo", CONFIG, killed, OVERRIDES, cache,
                       lambda: len(harness.checkpoint_steps(checkpoints)) >= 2, "after two checkpoints")
  assert max(harness.checkpoint_steps(checkpoints)) < N_STEPS
  harness.run("ppo", CONFIG, killed, OVERRIDES, cache)
  (state_a, extra_a), (state_b, extra_b) = _final_state(full), _final_state(killed)
  assert int(state_a.step) == int(state_b.step) == N_STEPS
  leaves_a, leaves_b = jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(state_a.opt_state), jax.tree.leaves(state_b.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert extra_a["ppo"] == extra_b["ppo"]  # KL coefficient and reward statistics


def test_frozen_dtype_stores_the_reference_in_bfloat16_and_trains_in_float32(tmp_path):
  from cai_jax import config as config_lib
  from cai_jax.stages import ppo as ppo_stage

  config = _config(tmp_path)
  config_lib.apply_overrides(config, {"ppo.frozen_dtype": "bfloat16"})
  state, _, iteration, loaded = ppo_stage.build_with_model(config)
  ref = jax.tree.leaves(iteration.ref_params)
  trained = jax.tree.leaves(state.params["policy"])
  assert {x.dtype for x in ref} == {np.dtype("bfloat16")}
  assert {x.dtype for x in trained} == {np.dtype("float32")}
  # The reference is the starting policy rounded to bfloat16, and what the stage keeps.
  for r, p in zip(ref, trained):
    np.testing.assert_array_equal(np.asarray(r), np.asarray(p).astype("bfloat16"))
  assert jax.tree.leaves(loaded.params)[0] is ref[0]
