"""Config section: sweeps (one experiment over a grid of settings and seeds)."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator


@section("sweep")
def _sweep() -> ConfigDict:
  return ConfigDict(dict(
      grid="",
  ))


@validator("sweep")
def _validate_sweep(c: ConfigDict) -> None:
  del c
