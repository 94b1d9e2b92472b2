"""Subprocess for test_checkpoint_resume: a short SFT run that resumes from its checkpoints.

  python tests/sft_resume_worker.py WORKDIR NUM_STEPS OUT.npz

Prints "STEP k" after every step (so the parent can SIGKILL it at a chosen step)
and writes the final params to OUT.npz.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cai_jax import sharding  # noqa: E402
from cai_jax.data.pipeline import SFTBatches, Tokenized  # noqa: E402
from cai_jax.models import Transformer, get_model_config  # noqa: E402
from cai_jax.train import sft  # noqa: E402
from cai_jax.train.checkpoint import Checkpointer  # noqa: E402
from cai_jax.train.loop import restore_or_keep, run_loop  # noqa: E402
from cai_jax.config import optim_section  # noqa: E402
from cai_jax.train.state import init_train_state, make_optimizer


class PrintStep:
  every = 1

  def __call__(self, step, state, metrics):
    print(f"STEP {step}", flush=True)


def main(workdir: str, num_steps: int, out: str) -> None:
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cfg = get_model_config("tiny")
  graphdef, params, pshard = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  rng = np.random.default_rng(0)
  items = [Tokenized(rng.integers(0, 256, 5 + i % 7).astype(np.int32), 2, "revision") for i in range(40)]
  stream = SFTBatches([items], [1.0], seq_len=24, batch_size=8, pad_id=0, seed=3)
  tx = make_optimizer(optim_section(lr=1e-2, warmup_steps=2, schedule="cosine"), num_steps)
  state, shardings = init_train_state(params, pshard, tx, jax.random.key(0), mesh)
  ckpt = Checkpointer(os.path.join(workdir, "ckpt"), keep=2)
  state, extra = restore_or_keep(ckpt, state, shardings)
  if extra:
    stream.set_state(extra["data"])
  step = sft.make_sft_step(graphdef=graphdef, tx=tx, state_shardings=shardings, mesh=mesh)
  state = run_loop(state=state, step_fn=lambda s, b: step(s, sharding.shard_batch(b, mesh)),
                   batches=stream, num_steps=num_steps, workdir=workdir, checkpointer=ckpt,
                   data_state_fn=lambda: {"data": stream.get_state()}, hooks=[PrintStep()],
                   save_every=1, log_every=0, stage="sft")
  ckpt.close()
  flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}
  np.savez(out, **flat)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
