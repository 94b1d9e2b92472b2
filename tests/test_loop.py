"""run_loop: metrics records, NaN guard, hooks that pause, eval cadence, resume (no model needed)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import (HookResult, NonFiniteError, Paused, attached_hooks,
                                restore_or_keep, run_loop)
from cai_jax.train.state import TrainState


def _state() -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(3)},
                    opt_state={"m": jnp.zeros(3)}, rng=jax.random.key(0))


def _step(bad_at: int | None = None):
  """w += batch; loss = 10 / new step (NaN at step `bad_at`)."""
  def step(state, batch):
    n = int(state.step) + 1
    loss = float("nan") if n == bad_at else 10.0 / n
    return (state.replace(step=state.step + 1, params={"w": state.params["w"] + batch},
                          opt_state={"m": state.opt_state["m"] + 1.0}), {"loss": jnp.float32(loss)})
  return step


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _shardings(state):
  s = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: s, state)


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_step_is_one_metrics_line_and_a_tensorboard_scalar(tmp_path):
  state = run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=5,
                   workdir=tmp_path, checkpointer=None, stage="sft", tokens_in_batch=64)
  assert int(state.step) == 5
  np.testing.assert_array_equal(state.params["w"], [5.0, 5.0, 5.0])
  rows = _lines(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert all(r["stage"] == "sft" for r in rows)
  np.testing.assert_allclose([r["loss"] for r in rows], [10.0 / n for n in range(1, 6)], rtol=1e-6)
  assert all(r["tokens_per_s"] > 0 for r in rows)
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_nan_stops_with_a_clear_error_and_the_last_good_checkpoint_stays_newest(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  with pytest.raises(NonFiniteError, match=r"step 5: non-finite metrics.*last good checkpoint is step 4"):
    run_loop(state=_state(), step_fn=_step(bad_at=5), batches=iter([1.0] * 10), num_steps=8,
             workdir=tmp_path, checkpointer=ckpt, save_every=2, stage="sft")
  assert ckpt.all_steps() == [2, 4]
  restored, _ = Checkpointer(tmp_path / "ckpt").restore_latest(_abstract(_state()), _shardings(_state()))
  assert int(restored.step) == 4
  np.testing.assert_array_equal(restored.params["w"], [4.0, 4.0, 4.0])
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]  # the NaN step is not logged


class _Gate:
  """Asks to pause at `pause_at` (the constitutional checkpoint's shape); records its calls."""

  def __init__(self, every: int, pause_at: int):
    self.every, self.pause_at, self.calls = every, pause_at, []

  def __call__(self, step, state, metrics):
    self.calls.append(step)
    if step == self.pause_at:
      return HookResult("pause", "harmlessness eval fell below 0.5", {"gate/score": 0.25})
    return HookResult("continue", metrics={"gate/score": 0.75})


def test_a_hook_pause_saves_writes_an_alert_raises_paused_and_a_rerun_resumes_to_the_end(tmp_path):
  gate = _Gate(every=3, pause_at=6)
  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  data = [float(i) for i in range(1, 11)]
  with pytest.raises(Paused, match=r"ppo paused at step 6 \(checkpoint saved; see .*ALERT.txt\): "
                     r"harmlessness eval fell below 0.5") as paused:
    run_loop(state=_state(), step_fn=_step(), batches=iter(data), num_steps=10, workdir=tmp_path,
             checkpointer=ckpt, hooks=[gate], stage="ppo")
  assert (paused.value.stage, paused.value.step, paused.value.alert) == ("ppo", 6, tmp_path / "ALERT.txt")
  assert gate.calls == [3, 6]
  assert ckpt.all_steps() == [6]
  assert (tmp_path / "ALERT.txt").read_text() == "ppo step 6: pause: harmlessness eval fell below 0.5\n"
  rows = _lines(tmp_path / "metrics.jsonl")
  assert [r.get("gate/score") for r in rows] == [None, None, 0.75, None, None, 0.25]
  # Resume: restore, skip the batches already used, finish; same result as one uninterrupted pass.
  state, extra = restore_or_keep(Checkpointer(tmp_path / "ckpt"), _state(), _shardings(_state()))
  assert int(state.step) == 6 and extra == {}
  state = run_loop(state=state, step_fn=_step(), batches=iter(data[6:]), num_steps=10, workdir=tmp_path,
                   checkpointer=Checkpointer(tmp_path / "ckpt"), stage="ppo")
  np.testing.assert_array_equal(state.params["w"], [sum(data)] * 3)
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == list(range(1, 11))


def test_a_stop_request_saves_writes_the_alert_and_returns(tmp_path):
  class Stop:
    every = 2

    def __call__(self, step, state, metrics):
      return HookResult("stop", "enough") if step == 4 else None

  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  state = run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=10,
                   workdir=tmp_path, checkpointer=ckpt, hooks=[Stop()], stage="sft")
  assert int(state.step) == 4 and ckpt.all_steps() == [4]
  assert (tmp_path / "ALERT.txt").read_text() == "sft step 4: stop: enough\n"


def test_on_pause_runs_after_the_checkpoint_and_the_alert_are_written(tmp_path):
  seen = []

  class Gate:
    every = 2

    def __call__(self, step, state, metrics):
      def told(alert):
        seen.append((alert.read_text(), Checkpointer(tmp_path / "ckpt").all_steps()))
      return HookResult("pause", "drifted", on_pause=told) if step == 4 else None

  with pytest.raises(Paused):
    run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=10,
             workdir=tmp_path, checkpointer=Checkpointer(tmp_path / "ckpt"), hooks=[Gate()], stage="dpo")
  assert seen == [("dpo step 4: pause: drifted\n", [4])]


def test_attached_hooks_run_in_every_loop_inside_the_block_and_only_there(tmp_path):
  gate = _Gate(every=2, pause_at=-1)
  with attached_hooks([gate]):
    run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=5,
             workdir=tmp_path / "a", checkpointer=None)
  run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=5,
           workdir=tmp_path / "b", checkpointer=None)
  assert gate.calls == [2, 4]


def test_eval_runs_every_n_steps_and_is_logged_with_a_prefix(tmp_path):
  evals = []

  def eval_fn(state):
    evals.append(int(state.step))
    return {"loss": jnp.float32(int(state.step) / 100)}

  run_loop(state=_state(), step_fn=_step(), batches=iter([1.0] * 10), num_steps=7, workdir=tmp_path,
           checkpointer=None, eval_fn=eval_fn, eval_every=3)
  assert evals == [3, 6]
  rows = {r["step"]: r for r in _lines(tmp_path / "metrics.jsonl")}
  assert [s for s, r in rows.items() if "eval/loss" in r] == [3, 6]
  assert math.isclose(rows[6]["eval/loss"], 0.06, rel_tol=1e-6)


def test_a_pause_request_from_a_hook_must_name_a_known_action():
  with pytest.raises(ValueError, match="HookResult.action"):
    HookResult("halt")


class _Lazy:
  """A metric still "on the device": logs when the loop reads it (jax.device_get calls __array__)."""

  def __init__(self, value, step, events):
    self.value, self.step, self.events = value, step, events

  def __array__(self, dtype=None, copy=None):
    self.events.append(f"read {self.step}")
    return np.asarray(self.value, dtype)


def _donating_step(events, bad_at=None):
  """A jitted step that donates its state (like the stages'), logging each dispatch; lazy metrics."""
  inner = jax.jit(lambda state, batch: state.replace(
      step=state.step + 1, params={"w": state.params["w"] + batch},
      opt_state={"m": state.opt_state["m"] + 1.0}), donate_argnums=0)

  def step(state, batch):
    n = int(state.step) + 1
    events.append(f"dispatch {n}")
    return inner(state, batch), {"loss": _Lazy(np.float32("nan" if n == bad_at else 10.0 / n), n, events)}
  return step


def test_a_plain_steps_metrics_are_read_after_the_next_step_is_dispatched(tmp_path):
  events = []
  gate = _Gate(every=3, pause_at=-1)  # steps 3 and 6 need their state: read before dispatching on
  state = run_loop(state=_state(), step_fn=_donating_step(events), batches=iter([1.0] * 10),
                   num_steps=7, workdir=tmp_path, checkpointer=None, hooks=[gate])
  assert events == ["dispatch 1", "dispatch 2", "read 1", "dispatch 3", "read 2", "read 3",
                    "dispatch 4", "dispatch 5", "read 4", "dispatch 6", "read 5", "read 6",
                    "dispatch 7", "read 7"]
  assert int(state.step) == 7 and gate.calls == [3, 6]
  np.testing.assert_array_equal(state.params["w"], [7.0] * 3)


def test_a_nan_just_before_a_save_step_is_never_saved(tmp_path):
  # Step 8 (finite, a save step) is dispatched from step 7's NaN state before 7's metrics are read.
  events, ckpt = [], Checkpointer(tmp_path / "ckpt", keep=5)
  with pytest.raises(NonFiniteError, match=r"step 7: non-finite metrics.*last good checkpoint is step 4"):
    run_loop(state=_state(), step_fn=_donating_step(events, bad_at=7), batches=iter([1.0] * 12),
             num_steps=12, workdir=tmp_path, checkpointer=ckpt, save_every=4)
  assert events[-2:] == ["dispatch 8", "read 7"]
  assert Checkpointer(tmp_path / "ckpt").all_steps() == [4]
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == list(range(1, 7))


def test_a_nan_where_the_data_runs_out_is_not_saved_by_the_final_save(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  with pytest.raises(NonFiniteError, match=r"step 5: non-finite metrics.*last good checkpoint is step 4"):
    run_loop(state=_state(), step_fn=_donating_step([], bad_at=5), batches=iter([1.0] * 5),
             num_steps=8, workdir=tmp_path, checkpointer=ckpt, save_every=4)
  assert Checkpointer(tmp_path / "ckpt").all_steps() == [4]


def test_metrics_lines_are_one_per_step_in_order_with_eval_and_hook_values(tmp_path):
  def eval_fn(state):
    return {"loss": jnp.float32(int(state.step) / 100)}

  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  run_loop(state=_state(), step_fn=_donating_step([]), batches=iter([1.0] * 10), num_steps=10,
           workdir=tmp_path, checkpointer=ckpt, eval_fn=eval_fn, eval_every=3,
           hooks=[_Gate(every=4, pause_at=-1)], save_every=5, tokens_in_batch=64, stage="sft")
  rows = _lines(tmp_path / "metrics.jsonl")
  assert all(r.pop("tokens_per_s") > 0 for r in rows)
  expected = []
  for n in range(1, 11):
    row = {"step": n, "stage": "sft", "loss": float(np.float32(10.0 / n))}
    if n % 3 == 0:
      row["eval/loss"] = float(np.float32(n / 100))
    if n % 4 == 0:
      row["gate/score"] = 0.75
    expected.append(row)
  assert rows == expected
  assert ckpt.all_steps() == [5, 10]


def test_when_the_data_runs_out_after_a_plain_step_it_is_recorded_and_saved(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
  state = run_loop(state=_state(), step_fn=_donating_step([]), batches=iter([1.0] * 7), num_steps=10,
                   workdir=tmp_path, checkpointer=ckpt, save_every=4)
  assert int(state.step) == 7
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == list(range(1, 8))
  assert ckpt.all_steps() == [4, 7]
  restored, _ = Checkpointer(tmp_path / "ckpt").restore_latest(_abstract(_state()), _shardings(_state()))
  np.testing.assert_array_equal(restored.params["w"], [7.0] * 3)
