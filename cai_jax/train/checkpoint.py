"""Checkpoints: orbax CheckpointManager over a TrainState plus a JSON `extra`.

A checkpoint holds params, optimizer state, RNG key (as raw key data), step,
and `extra` (JSON: the data iterator's state, host-side counters). Saves are
asynchronous on accelerators (the step loop goes on while files are written),
synchronous on CPU (`async_default`), and only the newest `keep` are kept.
Restoring takes target shardings, so a run saved on one mesh resumes on another.
A latest checkpoint that cannot be read (torn write, corrupted file) is skipped
with a warning and the one before is used; when none can be read, restoring is
an error naming the folder (a run never silently starts again from step 0 over
checkpoints it could not read).

Arrays are written uncompressed: float weights and optimizer moments do not
compress, and orbax's compressing writer holds about one extra copy of the
state in host memory while it saves (measured: +1.45 GB for a 1.6 GB state on
CPU, against +0.01 GB uncompressed), which decides whether a 135M-parameter
run fits a laptop. Checkpoints written compressed by older versions still read.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from cai_jax import paths
from cai_jax.train.state import TrainState

log = logging.getLogger(__name__)


def _raw_rng(state: TrainState) -> TrainState:
  rng = state.rng
  if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return state.replace(rng=jax.random.key_data(rng))
  if isinstance(rng, jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return state.replace(rng=jax.eval_shape(jax.random.key_data, rng))
  return state


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's pytree handler writing arrays uncompressed (see the module docstring)."""
  return ocp.PyTreeCheckpointHandler(use_compression=False)


def pytree_restore(target: Any) -> ocp.args.PyTreeRestore:
  """Restore arguments placing every array as its ShapeDtypeStruct in `target` says."""
  return ocp.args.PyTreeRestore(item=target,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def async_default() -> bool:
  """Whether saves run asynchronously by default: not on CPU-only processes.

  An asynchronous save reads the arrays while the loop goes on; on CPU "copying
  to host" is a view of the device buffer, so the buffer cannot be donated to the
  next step and the whole old state (params and Adam moments: 1.6 GB for 135M
  parameters) stays alive beside the new one until the files are written. On an
  accelerator the host copy is separate memory and the save overlaps compute.
  """
  return any(d.platform != "cpu" for d in jax.local_devices())


class Checkpointer:
  """Saves / restores TrainStates under `directory` (one sub-directory per step)."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, async_save: bool | None = None):
    """async_save None: asynchronous, except where every device is a CPU (see `async_default`)."""
    # A gs:// folder stays a URL (orbax writes it through epath and tensorstore).
    directory = paths.as_path(directory)
    self.directory = directory if paths.is_remote(directory) else directory.absolute()
    async_save = async_default() if async_save is None else async_save
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_handlers={"state": state_handler(), "extra": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: TrainState, extra: dict | None = None) -> None:
    """Starts saving `state` (+ JSON-serialisable `extra`) as checkpoint `step`.

    A save that fails (disk full, no permission, ...) raises SaveFailed naming the folder and
    the reason; orbax writes into a temporary folder and renames it only when complete, so the
    checkpoints already there stay whole, and the partial folder is removed here."""
    try:
      self._mgr.save(int(step), args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(_raw_rng(state)), extra=ocp.args.JsonSave(extra or {})),
          force=True)
    except (OSError, ValueError, RuntimeError) as e:
      self._remove_partial(step)
      raise SaveFailed(f"{self.directory}: could not save checkpoint {step} ({e}); the checkpoints "
                       f"already there are kept (steps {self._finished_steps() or 'none'}), and a "
                       "rerun resumes from the newest once the cause is fixed") from e

  def _finished_steps(self) -> list[int]:
    if paths.is_remote(self.directory) or not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

  def _remove_partial(self, step: int) -> None:
    """Best effort: the temporary folder of a failed save (freeing the space it took)."""
    if paths.is_remote(self.directory) or not self.directory.is_dir():
      return
    import shutil
    for p in self.directory.glob(f"{int(step)}.orbax-checkpoint-tmp*"):
      shutil.rmtree(p, ignore_errors=True)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()

  def all_steps(self) -> list[int]:
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def restore(self, step: int, abstract_state: TrainState, shardings: Any) -> tuple[TrainState, dict]:
    """Checkpoint `step` placed on `shardings` (pytree of NamedShardings matching the state)."""
    target = _raw_rng(abstract_state)
    # The RNG's (replicated) sharding applies unchanged to its raw key data.
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          target, shardings)
    out = self._mgr.restore(int(step), args=ocp.args.Composite(
        state=pytree_restore(target), extra=ocp.args.JsonRestore()))
    state = out["state"]
    if jax.dtypes.issubdtype(abstract_state.rng.dtype, jax.dtypes.prng_key):
      state = state.replace(rng=jax.random.wrap_key_data(state.rng))
    return state, dict(out["extra"] or {})

  def restore_latest(self, abstract_state: TrainState, shardings: Any) -> tuple[TrainState, dict] | None:
    """(state, extra) of the newest readable checkpoint, or None when there are no checkpoints.

    An unreadable checkpoint is reported (warning) and the previous one tried; when every
    one is unreadable, raises CorruptCheckpoints (a ValueError) naming the folder.
    """
    steps = self.all_steps()
    reasons = []
    for step in reversed(steps):
      try:
        return self.restore(step, abstract_state, shardings)
      except Exception as e:  # noqa: BLE001 - any read failure means "this one is damaged"
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        reasons.append(f"step {step}: {reason}")
        log.warning("checkpoint %s/%d is unreadable (%s); falling back to the previous one",
                    self.directory, step, reason)
    if steps:
      raise CorruptCheckpoints(
          f"{self.directory}: none of the {len(steps)} checkpoints (steps {steps}) can be read "
          f"({reasons[0]}); delete the folder to train again from step 0, or restore it from a copy")
    return None


class CorruptCheckpoints(ValueError):
  """Every checkpoint in a folder is unreadable."""


class SaveFailed(ValueError):
  """A checkpoint could not be written (the earlier ones are intact)."""

