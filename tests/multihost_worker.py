"""One process of a two-process CPU "pod" (run by test_multihost.py, not by pytest).

argv: process_id port out.npy — builds the tiny model on a (data=2, tensor=4)
mesh spanning both processes, feeds each process its half of the batch, and
writes the gathered per-row logit sums.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from cai_jax import sharding  # noqa: E402
from cai_jax.models import Transformer, get_model_config  # noqa: E402


def main(process_id: int, port: str, out: str) -> None:
  sharding.maybe_initialize_distributed(f"localhost:{port}", 2, process_id)
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  cfg = get_model_config("tiny")
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  graphdef, params, _ = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (8, 6)).astype(np.int32)
  positions = np.broadcast_to(np.arange(6, dtype=np.int32), (8, 6))
  mine = slice(4 * process_id, 4 * process_id + 4)  # this host's share of the global batch
  batch = sharding.shard_batch({"tokens": tokens[mine], "positions": positions[mine]}, mesh)
  forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["tokens"], b["positions"])[0])
  logits = multihost_utils.process_allgather(forward(params, batch), tiled=True)
  if process_id == 0:
    np.save(out, np.asarray(logits))


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
