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
from cai_jax.models import Transformer, get_model_config

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict[str, np.ndarray]]:
  """Each worker's outputs (multihost_worker.py): logits of one global batch fed as per-host
  slices and as a whole batch on every host, both gathered to every host."""
  port, out = str(_free_port()), tmp_path_factory.mktemp("multihost") / "out"
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
  return [dict(np.load(f"{out}.{i}.npz")) for i in range(2)]


@pytest.fixture(scope="module")
def one_process_logits() -> np.ndarray:
  cfg = get_model_config("tiny")
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (8, 6)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (8, 6))
  logits, _ = Transformer(cfg, rngs=nnx.Rngs(0))(tokens, positions)
  return np.asarray(logits)


def test_two_process_mesh_matches_single_process(two_processes, one_process_logits):
  for worker in two_processes:  # to_host gives every host the whole batch's logits
    np.testing.assert_allclose(worker["local"], one_process_logits, atol=1e-5)


def test_whole_batch_on_every_host_is_the_same_global_batch(two_processes, one_process_logits):
  # shard_global_batch: 8 rows in all (not 8 per host), each host placing its own half.
  for worker in two_processes:
    assert worker["shape"].tolist() == [8, 6]
    np.testing.assert_allclose(worker["whole"], one_process_logits, atol=1e-5)
  assert [w["rows"].tolist() for w in two_processes] == [[0], [4]]


def test_one_process_whole_batch_is_placed_as_given():
  mesh = sharding.make_mesh({"data": 4, "tensor": 2})
  batch = {"tokens": np.arange(24, dtype=np.int32).reshape(8, 3), "n": np.float32(2.0)}
  placed = sharding.shard_global_batch(batch, mesh)
  assert placed["tokens"].sharding.spec == sharding.batch_sharding(mesh, 2).spec
  host = sharding.to_host(placed)
  np.testing.assert_array_equal(host["tokens"], batch["tokens"])
  assert host["n"] == np.float32(2.0)


def test_distributed_arguments_are_checked():
  with pytest.raises(ValueError, match="give coordinator_address"):
    sharding.maybe_initialize_distributed("", num_processes=2, process_id=0)
  assert sharding.maybe_initialize_distributed("", num_processes=1) is False
