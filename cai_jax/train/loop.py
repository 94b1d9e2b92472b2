"""The shared training loop (SFT, reward model, PPO).

    state = run_loop(state=..., step_fn=..., batches=..., num_steps=..., workdir=..., checkpointer=...)

`step_fn(state, batch) -> (state, metrics)` is the stage's jitted pure step; it
advances `state.step` by one and may donate its `state` argument. The loop runs
it until `state.step == num_steps`, and around it:
  * appends {"step", "stage", **metrics} to `workdir/metrics.jsonl` and writes
    TensorBoard event files under `workdir/tb` (tensorboardX);
  * logs progress lines with tokens/s and an ETA (metrics, logs and ALERT.txt come from
    process 0 alone in a multi-host run: every host runs the loop, one reports);
  * runs `eval_fn(state) -> metrics` every `eval_every` steps ("eval/" prefix);
  * stops with `NonFiniteError` on a NaN/inf metric *before* saving, so the last
    good checkpoint stays the newest one on disk;
  * calls hooks every `hook.every` steps (its `hooks` argument, then those a stage
    attached around the call with `attached_hooks`); a hook may return a HookResult
    asking to stop (checkpoint, write `workdir/ALERT.txt`, return) or to pause
    (checkpoint, write `workdir/ALERT.txt`, call its `on_pause`, raise `Paused`: the
    run waits for a person, and the CLI exits with code 3);
  * saves a checkpoint (state + `data_state_fn()` as JSON) every `save_every`
    steps and at the end.

Overlap (as google-research/nanodo does): reading metrics to the host blocks on
the device, so a *plain* step N's metrics are read only after step N+1 has been
dispatched, and the host's work (next batch, records, logs) runs while the
device computes. A step whose *state* the loop needs -- an eval step, a hook
step, a save step, the last step -- is read synchronously, before the next
dispatch: that dispatch donates (invalidates) the state, and a state is saved
only after its own metrics were checked. So a non-finite step is never saved:
if it was a plain step, step N+1 was already dispatched from it, and the loop
raises before looking at N+1. Records, logs and results are as without overlap.

Resuming is the caller's `checkpointer.restore_latest(...)` before the call
(`restore_or_keep` does it); the loop continues from `state.step`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/inf metric; the offending state was not saved."""


@dataclasses.dataclass(frozen=True)
class HookResult:
  """What a hook asks of the loop: "continue", "stop" (checkpoint and return) or "pause"
  (checkpoint, ALERT.txt, then `on_pause(ALERT.txt's path)` if given, then raise Paused)."""

  action: str = "continue"
  message: str = ""
  metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
  on_pause: Callable[[pathlib.Path], None] | None = None

  def __post_init__(self):
    if self.action not in ("continue", "pause", "stop"):
      raise ValueError(f"HookResult.action: {self.action!r}; expected continue, pause or stop")


class Paused(RuntimeError):
  """The run is paused for a person to look at: a hook asked (the checkpoint of `step` is
  saved and `alert` written), or an earlier pause is not acknowledged yet. The CLI exits
  with code 3 (cli.EXIT_PAUSED) and prints the message."""

  def __init__(self, message: str, *, stage: str = "", step: int | None = None,
               alert: pathlib.Path | None = None):
    super().__init__(message)
    self.stage, self.step, self.alert = stage, step, alert


_ATTACHED: contextvars.ContextVar[tuple] = contextvars.ContextVar("attached_hooks", default=())


@contextlib.contextmanager
def attached_hooks(hooks: Sequence["Hook"]):
  """Every run_loop inside the block also runs `hooks` (after its own): how a stage hands a
  hook to a library function that owns the loop call, e.g.

      with loop.attached_hooks(guarding.hooks(config, "sft", loaded, mesh, workdir)):
        state, summary = sft.fine_tune(...)
  """
  token = _ATTACHED.set(_ATTACHED.get() + tuple(hooks))
  try:
    yield
  finally:
    _ATTACHED.reset(token)


class Hook(Protocol):
  """Called every `every` steps after the step; returns None or a HookResult."""

  every: int

  def __call__(self, step: int, state: TrainState, metrics: Mapping[str, float]) -> HookResult | None:
    ...


def restore_or_keep(checkpointer: Checkpointer, state: TrainState,
                    shardings: Any) -> tuple[TrainState, dict | None]:
  """(latest checkpoint placed on `shardings`, its extra) if any, else (state, None)."""
  restored = checkpointer.restore_latest(jax.tree.map(_abstract, state), shardings)
  if restored is None:
    return state, None
  log.info("resuming from %s at step %d", checkpointer.directory, int(restored[0].step))
  return restored


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x


class MetricsWriter:
  """metrics.jsonl (one JSON object per line) + TensorBoard scalars.

  In a multi-host run only process 0 writes (the metrics are global, so every host holds the
  same numbers); the others' writers do nothing."""

  def __init__(self, workdir: pathlib.Path, stage: str):
    self.stage = stage
    self._jsonl, self._tb = None, None
    if jax.process_index() != 0:
      return
    self._jsonl = (workdir / "metrics.jsonl").open("a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tb"))
    except ImportError:  # TensorBoard is optional; the JSONL is the record
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if self._jsonl is None:
      return
    self._jsonl.write(json.dumps({"step": step, "stage": self.stage, **metrics}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{self.stage}/{k}", v, step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | pathlib.Path, stage: str) -> list[dict]:
  """The records of one stage from a metrics.jsonl that MetricsWriter wrote ([] when the file
  does not exist); a malformed line names file:line."""
  from cai_jax.data.jsonl import iter_jsonl
  if not pathlib.Path(path).exists():
    return []
  return [r for _, r in iter_jsonl(path) if r.get("stage") == stage]


def _to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  host = jax.device_get(dict(metrics))
  return {k: float(np.asarray(v)) for k, v in host.items()}


def _check_finite(step: int, stage: str, metrics: Mapping[str, float], last_saved: int | None) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteError(
        f"{stage} step {step}: non-finite metrics {bad}; stopping without saving this state. "
        f"The last good checkpoint is step {last_saved} (resume from it, e.g. with a lower "
        "learning rate or after checking the data of this step).")


def _due(hook: Hook, step: int) -> bool:
  every = getattr(hook, "every", 1)
  return bool(every) and step % every == 0


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_loop(*, state: TrainState, step_fn: Callable, batches: Iterable, num_steps: int,
             workdir: str | pathlib.Path, checkpointer: Checkpointer | None,
             data_state_fn: Callable[[], dict] | None = None,
             eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None, eval_every: int = 0,
             hooks: Sequence[Hook] = (), log_every: int = 1,
             tokens_in_batch: int | Callable[[Any], int] | None = None, save_every: int = 0,
             stage: str = "train") -> TrainState:
  """Runs `step_fn` from `state.step` up to `num_steps`; returns the final state (see module doc)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  hooks = tuple(hooks) + _ATTACHED.get()
  writer = MetricsWriter(workdir, stage)
  primary = jax.process_index() == 0  # logs, progress and the alert file: one host writes them
  batches = iter(batches)
  step = int(state.step)
  start_step, t_start = step, time.perf_counter()
  window_tokens, window_t = 0, time.perf_counter()
  last_saved = checkpointer.all_steps()[-1] if checkpointer and checkpointer.all_steps() else None

  def save(at: int) -> None:
    nonlocal last_saved
    if checkpointer is not None and at != last_saved:
      checkpointer.save(at, state, data_state_fn() if data_state_fn else {})
      last_saved = at

  def needs_state(at: int) -> bool:
    """Whether step `at` must be finished before the next dispatch donates its state."""
    return (at == num_steps or bool(save_every and at % save_every == 0)
            or bool(eval_fn is not None and eval_every and at % eval_every == 0)
            or any(_due(hook, at) for hook in hooks))

  def finish(at: int, metrics: Mapping[str, Any], n_tok: int | None,
             live: TrainState | None = None) -> HookResult | None:
    """Reads step `at`'s metrics (blocking), checks them, runs eval and hooks on `live`, records."""
    nonlocal window_tokens, window_t
    metrics = _to_floats(metrics)
    _check_finite(at, stage, metrics, last_saved)
    window_tokens += n_tok or 0
    request = None
    if eval_fn is not None and eval_every and at % eval_every == 0:
      ev = _to_floats(eval_fn(live))
      _check_finite(at, f"{stage} eval", ev, last_saved)
      metrics.update({f"eval/{k}": v for k, v in ev.items()})
    if n_tok:
      metrics["tokens_per_s"] = window_tokens / max(time.perf_counter() - window_t, 1e-9)
    for hook in hooks:
      if _due(hook, at):
        result = hook(at, live, metrics)
        if result is not None:
          metrics.update(result.metrics)
          if result.action != "continue":
            request = request or result
    writer.write(at, metrics)
    if log_every and primary and (at % log_every == 0 or at == num_steps):
      elapsed = time.perf_counter() - t_start
      eta = elapsed / max(at - start_step, 1) * (num_steps - at)
      shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
      log.info("%s step %d/%d | %s | eta %s", stage, at, num_steps, shown, _eta(eta))
      window_tokens, window_t = 0, time.perf_counter()
    return request

  request = None
  pending = None  # (step, metrics, n_tok) of a plain step, finished after the next dispatch
  try:
    while step < num_steps:
      try:
        batch = next(batches)
      except StopIteration:
        log.warning("%s: data ran out at step %d of %d", stage, step, num_steps)
        break
      n_tok = tokens_in_batch(batch) if callable(tokens_in_batch) else tokens_in_batch
      state, metrics = step_fn(state, batch)
      step += 1  # counted on the host: int(state.step) would wait for the step
      if pending is not None:  # the previous step's metrics, read while this one runs
        finish(*pending)
        pending = None
      if not needs_state(step):
        pending = (step, metrics, n_tok)
        continue
      if int(state.step) != step:  # the host count above relies on it (checked where state is live)
        raise ValueError(f"{stage}: step_fn must advance state.step by one; at step {step} "
                         f"it is {int(state.step)}")
      request = finish(step, metrics, n_tok, state)
      if request is not None:
        save(step)
        alert = workdir / "ALERT.txt"
        if primary:
          alert.write_text(f"{stage} step {step}: {request.action}: {request.message}\n")
        log.warning("%s: a hook asked to %s at step %d: %s", stage, request.action, step,
                    request.message)
        if request.action == "pause":
          if checkpointer is not None:
            checkpointer.wait()  # the saved state is on disk before anyone is told
          if request.on_pause is not None:
            request.on_pause(alert)
          raise Paused(f"{stage} paused at step {step} (checkpoint saved; see {alert}): "
                       f"{request.message.splitlines()[0] if request.message else ''}",
                       stage=stage, step=step, alert=alert)
        break
      if save_every and step % save_every == 0:
        save(step)
    if pending is not None:  # the data ran out after a plain step: check it before the final save
      finish(*pending)
    if request is None:
      save(step)
  finally:
    writer.close()
    if checkpointer is not None:
      checkpointer.wait()
  return state
