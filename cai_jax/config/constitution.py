"""Config sections: the constitution every stage draws principles from, and the self-audit."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator

TIERS = ("universal", "contextual", "style")


@section("constitution")
def _constitution() -> ConfigDict:
  # Read by sl-data, feedback, audit and the `constitution` command (constitution.py).
  return ConfigDict(dict(
      sampling="uniform",  # uniform | tiered (draw a principle's tier by tier_weights first)
      tier_weights="universal=1,contextual=1,style=1",  # tiered: relative weight per tier
      n_principles=-1,  # keep a subset of this many principles (ablation); -1 = all
      subset_seed=0,  # which subset n_principles keeps (fixed across a sweep's points)
  ))


def parse_tier_weights(text: str) -> dict[str, float]:
  """"universal=2,style=0.5" -> {"universal": 2.0, "style": 0.5}; ValueError names the field."""
  weights = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, value = part.partition("=")
    name = name.strip()
    if not sep or name not in TIERS:
      raise ValueError(f"constitution.tier_weights: {part!r}; expected tier=weight with tier in {TIERS}")
    try:
      weights[name] = float(value)
    except ValueError:
      raise ValueError(f"constitution.tier_weights: {part!r}: weight is not a number") from None
    if weights[name] < 0:
      raise ValueError(f"constitution.tier_weights: {part!r}: weight must be >= 0")
  if weights and not any(weights.values()):
    raise ValueError("constitution.tier_weights: every weight is 0; no principle could be drawn")
  return weights


@validator("constitution")
def _validate_constitution(c: ConfigDict) -> None:
  if c.sampling not in ("uniform", "tiered"):
    raise ValueError(f"constitution.sampling: {c.sampling!r}; expected uniform or tiered")
  parse_tier_weights(c.tier_weights)
  if c.n_principles == 0 or c.n_principles < -1:
    raise ValueError(f"constitution.n_principles: expected -1 (all) or a positive count, got {c.n_principles}")
