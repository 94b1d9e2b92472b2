"""The constitutional checkpoint for a training stage: config.checkpoint -> loop hooks.

    guards = guarding.hooks(config, "sft", loaded, mesh, layout.stage_dir("sft"))
    with loop.attached_hooks(guards):        # or run_loop(..., hooks=guards)
      state, summary = sft.fine_tune(...)

`hooks` first enforces the pause: if the stage's folder holds an alert nobody has
acknowledged, it raises loop.Paused (the CLI exits with code 3) unless
checkpoint.ack names that alert, which it then marks acknowledged. With
checkpoint.enabled it builds the checkpoint (evals/guard.py) against the frozen
reference (checkpoint.reference, default the model the stage starts from: a copy
of `loaded`'s weights taken here, before the stage donates them, or the frozen
starting weights a stage keeps anyway, as PPO does for its KL) and returns it
wrapped as the loop's Hook; otherwise it returns []. A hook's verdict past a
threshold becomes HookResult("pause"): the loop saves the checkpoint, writes
ALERT.txt, runs checkpoint.alert_command and raises loop.Paused.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Mapping

import jax

from cai_jax.data.prompts import load_prompts
from cai_jax.evals import guard, probe
from cai_jax.stages import common
from cai_jax.train import loop

log = logging.getLogger(__name__)


def resource(spec: str) -> str:
  """A probe-set name under cai_jax/resources/guard/, else a (repository-relative) path."""
  path = guard.builtin_path(spec)
  return str(path) if "/" not in spec and path.is_file() else common.repo_path(spec)


def enforce_acknowledgement(c, stage: str, workdir: pathlib.Path) -> guard.AlertLog:
  """Raises loop.Paused while the stage's newest alert is unacknowledged (c.ack != its id)."""
  alerts = guard.AlertLog(workdir)
  pending = alerts.pending()
  if pending is None:
    if c.ack:
      log.info("%s: checkpoint.ack=%s: no pause is pending, nothing to acknowledge", stage, c.ack)
    return alerts
  if c.ack != pending["alert"]:
    said = f" (checkpoint.ack={c.ack!r} names another alert)" if c.ack else ""
    raise loop.Paused(
        f"{stage} is paused by the constitutional checkpoint at step {pending['step']} "
        f"(alert {pending['alert']}; see {workdir / 'ALERT.txt'}){said}. Look at it, then rerun "
        f"with --config.checkpoint.ack={pending['alert']} to continue from step {pending['step']}.",
        stage=stage, step=pending["step"], alert=workdir / "ALERT.txt")
  alerts.acknowledge(pending["alert"])
  log.warning("%s: alert %s acknowledged; continuing from step %d", stage, pending["alert"],
              pending["step"])
  return alerts


class CheckpointHook:
  """The loop's Hook around a guard.ConstitutionalCheckpoint (which knows no loop)."""

  def __init__(self, checkpoint: guard.ConstitutionalCheckpoint, alert_command: str = "",
               policy_params=lambda params: params):
    self.checkpoint, self.alert_command, self.policy_params = checkpoint, alert_command, policy_params
    self.every = checkpoint.every

  def __call__(self, step: int, state, metrics: Mapping[str, float]) -> loop.HookResult:
    verdict = self.checkpoint.check(step, self.policy_params(state.params))
    if verdict.alert is None:
      return loop.HookResult("continue", metrics=verdict.metrics)
    alert = verdict.alert
    return loop.HookResult("pause", alert.text(), verdict.metrics,
                           on_pause=lambda path: guard.run_alert_command(self.alert_command, alert, path))


def settings(config) -> guard.GuardSettings:
  c = config.checkpoint
  return guard.GuardSettings(
      thresholds=guard.Thresholds(**c.thresholds.to_dict()), every=c.every,
      sample_every=c.sample_every, k=c.k, refusal_opening=c.refusal_opening,
      max_new_tokens=c.max_new_tokens, temperature=c.temperature, batch_size=c.batch_size,
      max_prompt_len=c.max_prompt_len, probe_l2=c.probe.l2, probe_iterations=c.probe.iterations,
      seed=config.seed)


def hooks(config, stage: str, loaded, mesh, workdir, *, reference_params=None,
          policy_params: Callable = lambda params: params, alerts: guard.AlertLog | None = None
          ) -> list:
  """The constitutional checkpoint as loop hooks for `stage` ([] when disabled); raises
  loop.Paused while an alert of this stage is unacknowledged (see the module doc).

  reference_params: starting weights the stage itself keeps frozen and never donates
  (PPO's KL reference), used as the default reference without a copy. policy_params:
  maps the train state's params to the policy's (PPO's also hold the value head). alerts:
  what enforce_acknowledgement returned when the stage called it itself, before loading
  anything expensive (then it is not enforced twice)."""
  c, workdir = config.checkpoint, pathlib.Path(workdir)
  if alerts is None:
    alerts = enforce_acknowledgement(c, stage, workdir)
  if not c.enabled:
    return []
  if c.reference:
    reference = common.load(config, mesh, rules="train", source=c.reference)
    if reference.cfg != loaded.cfg:
      raise ValueError(f"checkpoint.reference: {c.reference} is not the architecture of the "
                       f"{stage} policy {loaded.source} (the KL runs both through one graph)")
    ref_params, label = reference.params, reference.source
  elif reference_params is not None:
    ref_params, label = reference_params, loaded.source
  else:  # a copy: the stage donates `loaded`'s buffers to its train state
    ref_params, label = jax.tree.map(lambda x: x.copy(), loaded.params), loaded.source
  n = common.limit(c.n_probes)
  checkpoint = guard.ConstitutionalCheckpoint(
      policy=loaded, reference_params=ref_params,
      harmful=[p.text for p in load_prompts(resource(c.harmful), n)],
      benign=[p.text for p in load_prompts(resource(c.benign), n)],
      probe_data=probe.load_labelled_prompts(resource(c.probe.data)), settings=settings(config),
      stage=stage, alerts=alerts, mesh=mesh, reference_label=label)
  return [CheckpointHook(checkpoint, c.alert_command, policy_params)]


def summary(guards: list) -> dict | None:
  """The checkpoint's part of a stage summary (None when it was off)."""
  return guards[0].checkpoint.summary() if guards else None
