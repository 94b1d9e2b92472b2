"""Test setup: 8 fake CPU devices so every sharded path runs on one machine."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """Path to ../shared/data; skips where the steering data is absent (a user's clone)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"reference data not found at {SHARED_DATA} (only present in the project workspace)")
  return SHARED_DATA


@pytest.fixture
def tiny_cfg():
  from cai_jax.models import get_model_config
  return get_model_config("tiny")
