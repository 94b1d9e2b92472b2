"""Config section: the constitutional checkpoint (drift against a frozen reference during training)."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator


@section("checkpoint")
def _checkpoint() -> ConfigDict:
  return ConfigDict(dict(
      enabled=False,
  ))


@validator("checkpoint")
def _validate_checkpoint(c: ConfigDict) -> None:
  del c
