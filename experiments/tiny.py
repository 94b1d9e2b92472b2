"""A tiny random model, for smoke tests and CI.

  python -m cai_jax info --config experiments/tiny.py
"""

from cai_jax.config import base_config


def get_config():
  config = base_config()
  config.workdir = "runs/tiny"
  config.model.source = "random"
  config.model.preset = "tiny"
  config.model.tokenizer = "bytes"
  config.sampler.max_new_tokens = 16
  return config
