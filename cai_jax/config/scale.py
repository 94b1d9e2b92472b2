"""Config section: the memory planner (`plan`)."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator


@section("plan")
def _plan() -> ConfigDict:
  return ConfigDict(dict(
      device_memory_gb=0.0,
  ))


@validator("plan")
def _validate_plan(c: ConfigDict) -> None:
  del c
