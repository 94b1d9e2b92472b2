"""Multi-host: the same program on two CPU processes (jax.distributed) == one process."""

import os
import pathlib
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cai_jax import sharding
from cai_jax.models import Transformer

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_mesh_matches_single_process(tmp_path, tiny_cfg):
  port, out = str(_free_port()), tmp_path / "logits.npy"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), port, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  try:
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("multi-host workers did not finish in 240 s")
  assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, tiny_cfg.vocab_size, (8, 6)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (8, 6))
  expected, _ = Transformer(tiny_cfg, rngs=nnx.Rngs(0))(tokens, positions)
  np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_distributed_arguments_are_checked():
  with pytest.raises(ValueError, match="give coordinator_address"):
    sharding.maybe_initialize_distributed("", num_processes=2, process_id=0)
  assert sharding.maybe_initialize_distributed("", num_processes=1) is False
