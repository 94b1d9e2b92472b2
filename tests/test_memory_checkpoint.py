"""Memory (issue 18): on CPU a saved state is handed on to the next step, not kept for the writer.

An asynchronous orbax save on CPU reads the device buffers in place, so the next
(donating) step cannot reuse them and a whole second state lives until the files
are written; train/checkpoint.py therefore saves synchronously where every device
is a CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.train.checkpoint import Checkpointer, async_default
from cai_jax.train.state import TrainState


def _state(n: int = 1000) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.arange(n, dtype=jnp.float32)},
                    opt_state={}, rng=jax.random.key(0))


_step = jax.jit(lambda s: s.replace(step=s.step + 1, params={"w": s.params["w"] + 1.0}),
                donate_argnums=0)


def test_saves_are_synchronous_on_a_cpu_only_process():
  assert jax.default_backend() == "cpu"
  assert async_default() is False


def test_a_saved_state_is_donated_to_the_next_step(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
  # 40 MB: big enough that an asynchronous writer would still hold the buffer at the next step.
  state = _state(10_000_000)
  ckpt.save(0, state)
  saved = state.params["w"]
  state = _step(state)
  jax.block_until_ready(state)
  assert saved.is_deleted()  # its buffer became the new state's: no second copy alive
  ckpt.close()


def test_a_synchronous_save_restores_what_was_saved(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
  ckpt.save(3, _step(_state()))
  abstract = jax.eval_shape(_state)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  restored, extra = ckpt.restore(3, abstract, shardings)
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(1000) + 1.0)
  assert int(restored.step) == 1 and extra == {}
  ckpt.close()


def test_a_save_that_fails_for_lack_of_space_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp
  import pytest

  from cai_jax.train.checkpoint import SaveFailed

  ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
  ckpt.save(1, _state())

  def full_disk(*args, **kwargs):  # the 'extra' item's write, after the state's arrays are written
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", full_disk)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "save", full_disk)
  with pytest.raises(SaveFailed, match=r"could not save checkpoint 2 .*No space left on device.*"
                                       r"kept \(steps \[1\]\)"):
    ckpt.save(2, _step(_state()))
  monkeypatch.undo()
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]  # no partial folder
  abstract = jax.eval_shape(_state)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
  restored, _ = Checkpointer(tmp_path / "ckpt").restore_latest(abstract, shardings)
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(1000.0))
