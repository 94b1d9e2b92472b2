"""Checkpoints: kill/resume is bit-identical, a corrupt latest falls back, all corrupt is an
error (never a silent restart from step 0), restore onto another mesh."""

import logging
import pathlib
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cai_jax import sharding
from cai_jax.models import Transformer
from cai_jax.train.checkpoint import Checkpointer, CorruptCheckpoints
from cai_jax.config import optim_section
from cai_jax.train.state import init_train_state, make_optimizer

WORKER = pathlib.Path(__file__).with_name("sft_resume_worker.py")
NUM_STEPS = 6


def _worker(workdir, out, kill_at=None):
  proc = subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(NUM_STEPS), str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if kill_at is not None:
    for line in proc.stdout:
      if line.strip() == f"STEP {kill_at}":
        proc.send_signal(signal.SIGKILL)  # possibly in the middle of an async save
        break
  _, err = proc.communicate(timeout=600)
  if kill_at is None:
    assert proc.returncode == 0, err[-3000:]
  else:
    assert proc.returncode == -signal.SIGKILL
  return proc


def test_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
  _worker(tmp_path / "straight", tmp_path / "straight.npz")
  kill_at = random.Random().randint(2, NUM_STEPS - 1)
  _worker(tmp_path / "killed", tmp_path / "unused.npz", kill_at=kill_at)
  assert not (tmp_path / "unused.npz").exists()
  _worker(tmp_path / "killed", tmp_path / "resumed.npz")
  a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} (killed at step {kill_at})")


def _state(mesh, seed=0):
  from cai_jax.models import get_model_config
  cfg = get_model_config("tiny")
  _, params, pshard = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)), mesh)
  tx = make_optimizer(optim_section(lr=1e-3))
  return init_train_state(params, pshard, tx, jax.random.key(seed), mesh)


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  mesh = sharding.make_mesh({"data": 8})
  s1, shardings = _state(mesh, seed=1)
  s2, _ = _state(mesh, seed=2)
  ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
  ckpt.save(1, s1, {"data": {"next_batch": 1}})
  ckpt.save(2, s2.replace(step=s2.step + 1), {"data": {"next_batch": 2}})
  ckpt.wait()
  for f in (tmp_path / "2").rglob("*"):  # garble every file of the newest checkpoint
    if f.is_file() and f.stat().st_size:
      f.write_bytes(b"\0garbage" * 4)
  with caplog.at_level(logging.WARNING):
    state, extra = Checkpointer(tmp_path).restore_latest(jax.tree.map(_abstract, s1), shardings)
  assert extra == {"data": {"next_batch": 1}}
  _equal(state.params, s1.params)
  assert "checkpoint" in caplog.text and "/2 is unreadable" in caplog.text


def test_every_checkpoint_corrupt_is_an_error_naming_the_folder(tmp_path, caplog):
  mesh = sharding.make_mesh({"data": 8})
  s1, shardings = _state(mesh, seed=1)
  ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(step, s1.replace(step=s1.step + step), {})
  ckpt.wait()
  for f in tmp_path.rglob("*"):  # garble every file of every checkpoint
    if f.is_file() and f.stat().st_size:
      f.write_bytes(b"\0garbage" * 4)
  with caplog.at_level(logging.WARNING), pytest.raises(CorruptCheckpoints) as e:
    Checkpointer(tmp_path).restore_latest(jax.tree.map(_abstract, s1), shardings)
  assert str(e.value).startswith(f"{tmp_path}: none of the 2 checkpoints (steps [1, 2]) can be read")
  assert "delete the folder to train again from step 0" in str(e.value)
  assert isinstance(e.value, ValueError)  # the CLI's one error path: message, exit code 2
  assert "/2 is unreadable" in caplog.text and "/1 is unreadable" in caplog.text


def test_no_checkpoints_at_all_means_start_from_scratch(tmp_path):
  mesh = sharding.make_mesh({"data": 8})
  s1, shardings = _state(mesh, seed=1)
  assert Checkpointer(tmp_path / "empty").restore_latest(jax.tree.map(_abstract, s1), shardings) is None


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def test_restore_onto_a_different_mesh(tmp_path):
  saved, _ = _state(sharding.make_mesh({"data": 8}))
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(0, saved, {})
  ckpt.wait()
  other = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  like, target = _state(other)
  state, _ = Checkpointer(tmp_path).restore_latest(jax.tree.map(_abstract, like), target)
  _equal(state.replace(rng=None), saved.replace(rng=None))
  emb = state.params["embed"]
  assert emb.sharding == target.params["embed"] and emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert jax.random.key_data(state.rng).tolist() == jax.random.key_data(saved.rng).tolist()
