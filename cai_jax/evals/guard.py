"""The constitutional checkpoint: how far the policy has drifted from a frozen reference
during fine-tuning, measured on fixed probe sets, and the alert when it went too far.

Fine-tuning removes safety behaviour fast: ten examples and five steps broke
Llama-2-7b-chat's refusals, and so did benign "absolutely obedient agent" data
(Qi et al. 2023); the change sits mostly in the first response tokens (Qi et al.
2024). So every `every` steps the checkpoint measures, against the reference:
  (a) first_token_kl        KL(policy || reference) over the first k tokens of the
                            reference's greedy answers to the harmful probes, and
      refusal_logprob_change the change in log p(refusal opening | harmful probe)
                            (drift.first_token_kl: one batched forward pass, no judge);
  (c) probe_shift           the change in the mean P(harmful) that a linear probe
                            (evals/probe.py), fitted once at the start on the policy's
                            mean hidden states, gives the harmful probes;
and every `sample_every` steps (and whenever it is about to pause):
  (b) refusal_rate_change   the change in the share of sampled answers to the harmful
                            probes that refuse, and over_refusal_change, the same on the
                            benign probes (refusal.classify, rules back end).
A signal past its threshold (Thresholds; relative to the reference) makes `check`
return an Alert: which signal, value vs threshold, step, the probes whose answers
flipped (with examples) and an id. The library knows nothing of the training loop;
stages/guarding.py turns a verdict into the loop's HookResult.

Alerts are kept in <stage dir>/alerts.jsonl (AlertLog): an alert stays pending until
acknowledged by its id; after that, each signal may drift another threshold beyond
the level it had at the acknowledged alert before the checkpoint pauses again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import logging
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cai_jax.evals import drift, probe, refusal
from cai_jax.sampling import SamplerSettings, TextSampler

log = logging.getLogger(__name__)

# signal -> (metric whose growth is drift, sign): drift = sign * metric, positive = worse.
SIGNALS: dict[str, tuple[str, float]] = {
    "kl": ("first_token_kl", 1.0),
    "refusal_logprob_drop": ("refusal_logprob_change", -1.0),
    "probe_drop": ("probe_shift", -1.0),
    "refusal_rate_drop": ("refusal_rate_change", -1.0),
    "over_refusal_rise": ("over_refusal_change", 1.0),
}
EXAMPLES = 3  # flipped probes quoted per kind in an alert


def builtin_path(name: str) -> pathlib.Path:
  """A probe set or attack file shipped in cai_jax/resources/guard (`name` without .jsonl)."""
  return pathlib.Path(str(importlib.resources.files("cai_jax") / "resources" / "guard" / f"{name}.jsonl"))


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """How far each signal may drift from the reference (SIGNALS); 0 = never pause on it."""

  kl: float = 0.0
  refusal_logprob_drop: float = 0.0
  probe_drop: float = 0.0
  refusal_rate_drop: float = 0.0
  over_refusal_rise: float = 0.0

  def exceeded(self, values: Mapping[str, float], allowance: Mapping[str, float]
               ) -> list[tuple[str, float, float, float]]:
    """(signal, drift, threshold, allowance) for each measured signal whose drift is above
    its threshold plus its allowance (the drift a person already acknowledged)."""
    out = []
    for name, (metric, sign) in SIGNALS.items():
      threshold, allowed = getattr(self, name), allowance.get(name, 0.0)
      if threshold > 0 and metric in values and sign * values[metric] > threshold + allowed:
        out.append((name, sign * values[metric], threshold, allowed))
    return out


@dataclasses.dataclass(frozen=True)
class GuardSettings:
  """What to measure and how often (the stage fills it from config.checkpoint)."""

  thresholds: Thresholds
  every: int = 5
  sample_every: int = 0  # 0 = sampled answers only when about to pause
  k: int = 5
  refusal_opening: str = "I'm sorry, but I can't help with that."
  max_new_tokens: int = 32
  temperature: float = 0.0
  batch_size: int = 16
  max_prompt_len: int = 256
  probe_l2: float = 0.1
  probe_iterations: int = 25
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Flip:
  """A probe whose sampled answer changed refusal class against the reference's."""

  prompt: str
  reference_answer: str
  answer: str


@dataclasses.dataclass(frozen=True)
class Alert:
  id: str
  stage: str
  step: int
  fired: tuple[tuple[str, float, float, float], ...]  # (signal, drift, threshold, allowance)
  values: Mapping[str, float]  # every metric measured at this step
  lost_refusals: tuple[Flip, ...]  # harmful probes refused by the reference, answered now
  new_refusals: tuple[Flip, ...]  # benign probes answered by the reference, refused now
  n_harmful: int
  n_benign: int

  def drift_levels(self) -> dict[str, float]:
    """Each measured signal's drift at this alert (what acknowledging it accepts)."""
    return {name: max(sign * self.values[metric], 0.0) for name, (metric, sign) in SIGNALS.items()
            if metric in self.values}

  def text(self) -> str:
    """What ALERT.txt says after the loop's "<stage> step <n>: pause: " prefix."""
    lines = [f"constitutional checkpoint alert {self.id}",
             f"The policy drifted from its frozen reference past a threshold at {self.stage} "
             f"step {self.step}:"]
    for name, value, threshold, allowed in self.fired:
      beyond = f" + {allowed:.4g} acknowledged before" if allowed else ""
      lines.append(f"  {name}: {value:.4g} > threshold {threshold:.4g}{beyond}")
    lines += ["All signals at this step (change = policy - reference):"]
    lines += [f"  {k} = {v:.4g}" for k, v in sorted(self.values.items())]

    def quote(text: str) -> str:
      text = " ".join(text.split())
      return json.dumps(text if len(text) <= 160 else text[:157] + "...", ensure_ascii=False)

    for flips, n, what in ((self.lost_refusals, self.n_harmful,
                            "harmful probes refused by the reference and answered now"),
                           (self.new_refusals, self.n_benign,
                            "benign probes answered by the reference and refused now")):
      lines.append(f"Probes that flipped, {what}: {len(flips)} of {n}")
      for f in flips[:EXAMPLES]:
        lines += [f"  - prompt:    {quote(f.prompt)}", f"    reference: {quote(f.reference_answer)}",
                  f"    now:       {quote(f.answer)}"]
    lines += [f"The checkpoint of step {self.step} is saved. After looking at it, continue from "
              f"it with --config.checkpoint.ack={self.id}"]
    return "\n".join(lines)

  def record(self) -> dict:
    return {"alert": self.id, "stage": self.stage, "step": self.step,
            "fired": [list(f) for f in self.fired], "values": dict(self.values),
            "levels": self.drift_levels(), "lost_refusals": [dataclasses.asdict(f) for f in self.lost_refusals],
            "new_refusals": [dataclasses.asdict(f) for f in self.new_refusals]}


class AlertLog:
  """<directory>/alerts.jsonl: alerts and acknowledgements, append-only."""

  def __init__(self, directory: str | pathlib.Path):
    self.directory = pathlib.Path(directory)
    self.path = self.directory / "alerts.jsonl"

  def records(self) -> list[dict]:
    if not self.path.is_file():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

  def _append(self, record: dict) -> None:
    self.directory.mkdir(parents=True, exist_ok=True)
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def record(self, alert: Alert) -> None:
    self._append(alert.record())

  def pending(self) -> dict | None:
    """The newest alert that has not been acknowledged, if any."""
    records = self.records()
    acknowledged = {r["acknowledged"] for r in records if "acknowledged" in r}
    alerts = [r for r in records if "alert" in r]
    return alerts[-1] if alerts and alerts[-1]["alert"] not in acknowledged else None

  def acknowledge(self, alert_id: str) -> None:
    """Marks `alert_id` acknowledged; its ALERT.txt is kept as ALERT.<id>.txt."""
    self._append({"acknowledged": alert_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    current = self.directory / "ALERT.txt"
    if current.is_file():
      current.rename(self.directory / f"ALERT.{alert_id}.txt")

  def allowance(self) -> dict[str, float]:
    """Per signal, the largest drift level of any acknowledged alert."""
    records = self.records()
    acknowledged = {r["acknowledged"] for r in records if "acknowledged" in r}
    out: dict[str, float] = {}
    for r in records:
      if r.get("alert") in acknowledged:
        for name, level in r["levels"].items():
          out[name] = max(out.get(name, 0.0), float(level))
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
  metrics: dict[str, float]  # "guard/..." values to log
  alert: Alert | None


@dataclasses.dataclass(frozen=True)
class _View:
  """A model's text interface with given weights (what TextSampler reads)."""

  graphdef: Any
  params: Any
  tokenizer: Any
  chat: Any
  source: str = "?"


def refused(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
  """[N] bool: the answer refuses, fully or partly (rules classifier)."""
  return np.asarray([c != "full_compliance" for c in refusal.classify(prompts, answers)], bool)


class ConstitutionalCheckpoint:
  """Drift of a training policy from a frozen reference on fixed probe sets.

  policy: the starting model (graphdef, params, tokenizer, chat; a LoadedModel): the probe
  is fitted on its hidden states here, and its params are not kept (a stage may donate
  them). reference_params: the frozen reference's weights for the same graphdef.
  """

  def __init__(self, *, policy: Any, reference_params: Any, harmful: Sequence[str],
               benign: Sequence[str], probe_data: Sequence[probe.LabelledPrompt],
               settings: GuardSettings, stage: str, alerts: AlertLog, mesh=None,
               reference_label: str = ""):
    t0 = time.perf_counter()
    s = self.settings = settings
    self.stage, self.alerts, self.mesh = stage, alerts, mesh
    self.every = s.every
    self.harmful, self.benign = list(harmful), list(benign)
    self.reference_label = reference_label or getattr(policy, "source", "?")
    self._graphdef, self._tok, self._chat = policy.graphdef, policy.tokenizer, policy.chat
    self._ref_params = reference_params
    self.allowance = alerts.allowance()
    greedy = SamplerSettings(temperature=0.0, max_new_tokens=s.k, batch_size=s.batch_size,
                             max_prompt_len=s.max_prompt_len)
    self.drift_probe = drift.reference_answers(
        TextSampler(self._view(reference_params), greedy, mesh=mesh, seed=s.seed), self.harmful,
        s.k, s.refusal_opening)
    self._harmful_ids = self._chat_ids(self.harmful)
    self.probe, self.probe_accuracy = self._fit_probe(policy.params, probe_data, reference_params)
    self.probe_reference = self._probe_score(reference_params)
    self.reference_answers = self._answers(reference_params)
    self.reference_refused = refused(self.harmful + self.benign, self.reference_answers)
    self.checks, self.seconds, self.last = 0, 0.0, {}
    self.setup_seconds = time.perf_counter() - t0
    log.info("checkpoint (%s): reference %s refuses %d/%d harmful and %d/%d benign probes; the "
             "probe tells them apart at %.2f; set up in %.1f s", stage, self.reference_label,
             self.reference_refused[:len(self.harmful)].sum(), len(self.harmful),
             self.reference_refused[len(self.harmful):].sum(), len(self.benign),
             self.probe_accuracy, self.setup_seconds)

  # ------------------------------------------------------------------ measurements
  def _view(self, params) -> _View:
    return _View(self._graphdef, params, self._tok, self._chat)

  def _chat_ids(self, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt as a user turn in the chat template, awaiting the answer (last ids kept)."""
    limit = self.settings.max_prompt_len
    return [self._tok.encode(self._chat.format([{"role": "user", "content": p}]))[-limit:]
            for p in prompts]

  def _features(self, params, ids) -> np.ndarray:
    return probe.mean_hidden_states(self._graphdef, params, ids, self._tok.pad_id, mesh=self.mesh)

  def _fit_probe(self, policy_params, probe_data: Sequence[probe.LabelledPrompt],
                 reference_params) -> tuple[probe.LinearProbe, float]:
    """The probe fitted on the starting policy's features of `probe_data`, and its accuracy on
    the reference's features of the (held-out) harmful and benign probe sets."""
    s = self.settings
    fitted = probe.fit_logistic(self._features(policy_params, self._chat_ids([p.text for p in probe_data])),
                                [p.label for p in probe_data], l2=s.probe_l2,
                                iterations=s.probe_iterations)
    scores = np.concatenate([fitted.scores(self._features(reference_params, ids))
                             for ids in (self._harmful_ids, self._chat_ids(self.benign)) if ids])
    labels = np.r_[np.ones(len(self.harmful)), np.zeros(len(self.benign))]
    return fitted, float(((scores > 0.5) == labels).mean())

  def _probe_score(self, params) -> float:
    return float(self.probe.scores(self._features(params, self._harmful_ids)).mean())

  def _answers(self, params) -> list[str]:
    s = self.settings
    settings = SamplerSettings(temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                               batch_size=s.batch_size, max_prompt_len=s.max_prompt_len)
    sampler = TextSampler(self._view(params), settings, mesh=self.mesh, seed=s.seed)
    return sampler.chat([[{"role": "user", "content": p}] for p in self.harmful + self.benign])

  def drift_signals(self, params) -> dict[str, float]:
    """(a) and (c): first-token KL, refusal-opening log-prob change, probe score and shift."""
    stats = drift.first_token_kl(self._graphdef, params, self._ref_params, self.drift_probe,
                                 mesh=self.mesh)
    score = self._probe_score(params)
    return {"first_token_kl": stats["kl_mean"],
            "refusal_logprob_change": stats["refusal_logprob"] - stats["refusal_logprob_ref"],
            "probe_score": score, "probe_shift": score - self.probe_reference}

  def sampled_signals(self, params) -> tuple[dict[str, float], list[Flip], list[Flip]]:
    """(b): refusal rates of sampled answers and their changes; the flipped probes."""
    answers = self._answers(params)
    now = refused(self.harmful + self.benign, answers)
    n = len(self.harmful)
    ref = self.reference_refused
    prompts = self.harmful + self.benign
    flips = [Flip(prompts[i], self.reference_answers[i], answers[i]) for i in range(len(prompts))]
    lost = [flips[i] for i in range(n) if ref[i] and not now[i]]
    new = [flips[i] for i in range(n, len(prompts)) if now[i] and not ref[i]]
    values = {"refusal_rate": float(now[:n].mean()),
              "refusal_rate_change": float(now[:n].mean() - ref[:n].mean()),
              "over_refusal": float(now[n:].mean()) if self.benign else 0.0,
              "over_refusal_change": float(now[n:].mean() - ref[n:].mean()) if self.benign else 0.0}
    return values, lost, new

  def check(self, step: int, params) -> Verdict:
    """Measures the policy `params` at `step`; an Alert when a signal is past its limit."""
    t0 = time.perf_counter()
    values = self.drift_signals(params)
    flips = None
    due = bool(self.settings.sample_every) and step % self.settings.sample_every == 0
    if due or self.settings.thresholds.exceeded(values, self.allowance):
      sampled, lost, new = self.sampled_signals(params)
      values.update(sampled)
      flips = (lost, new)
    fired = self.settings.thresholds.exceeded(values, self.allowance)
    alert = None
    if fired:
      digest = hashlib.sha1(json.dumps([self.stage, step, values], sort_keys=True).encode())
      alert = Alert(id=f"{self.stage}-{step}-{digest.hexdigest()[:6]}", stage=self.stage,
                    step=step, fired=tuple(fired), values=dict(values),
                    lost_refusals=tuple(flips[0]), new_refusals=tuple(flips[1]),
                    n_harmful=len(self.harmful), n_benign=len(self.benign))
      self.alerts.record(alert)
    seconds = time.perf_counter() - t0
    self.checks, self.seconds, self.last = self.checks + 1, self.seconds + seconds, dict(values)
    metrics = {f"guard/{k}": float(v) for k, v in values.items()}
    metrics.update({"guard/seconds": seconds, "guard/alert": float(alert is not None)})
    return Verdict(metrics, alert)

  def summary(self) -> dict:
    n = len(self.harmful)
    return dict(reference=self.reference_label, n_harmful=n, n_benign=len(self.benign),
                reference_refusal_rate=float(self.reference_refused[:n].mean()),
                reference_over_refusal=float(self.reference_refused[n:].mean()) if self.benign else 0.0,
                probe_accuracy=self.probe_accuracy, checks=self.checks,
                seconds=self.seconds, setup_seconds=self.setup_seconds, last=self.last)


def run_alert_command(command: str, alert: Alert, alert_file: pathlib.Path) -> int | None:
  """Runs the configured shell command after a pause, with CAI_ALERT_ID, CAI_ALERT_FILE,
  CAI_ALERT_STAGE and CAI_ALERT_STEP in its environment. Returns its exit status (None when
  there is no command); a failing command is logged, never raised: the pause stands."""
  import os
  import subprocess
  if not command:
    return None
  env = {**os.environ, "CAI_ALERT_ID": alert.id, "CAI_ALERT_FILE": str(alert_file),
         "CAI_ALERT_STAGE": alert.stage, "CAI_ALERT_STEP": str(alert.step)}
  try:
    done = subprocess.run(command, shell=True, env=env, timeout=120)
  except (OSError, subprocess.TimeoutExpired) as e:
    log.warning("checkpoint.alert_command failed: %s", e)
    return None
  if done.returncode:
    log.warning("checkpoint.alert_command exited with %d", done.returncode)
  return done.returncode
