"""One process of a two-process CPU "pod" (run by test_multihost.py, not by pytest).

argv: process_id port out.npz — builds the tiny model on a (data=2, tensor=4) mesh
spanning both processes and runs the forward pass on one global batch fed two ways:
each process its half (`shard_batch`), and each process the whole batch, placing only
its devices' rows (`shard_global_batch`). Writes both logits, gathered to every host
with `to_host`, and this host's row ranges.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

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
  forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["tokens"], b["positions"])[0])
  local = sharding.shard_batch({"tokens": tokens[mine], "positions": positions[mine]}, mesh)
  whole = sharding.shard_global_batch({"tokens": tokens, "positions": positions}, mesh)
  rows = sorted({s.index[0].start for s in whole["tokens"].addressable_shards})
  logits_local, logits_whole = sharding.to_host((forward(params, local), forward(params, whole)))
  np.savez(f"{out}.{process_id}.npz", local=logits_local, whole=logits_whole,
           shape=np.asarray(whole["tokens"].shape), rows=np.asarray(rows))


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
