"""A tiny random model, for smoke tests and CI.

  python -m cai_jax info --config experiments/tiny.py
"""

from cai_jax.config import base_config, use_tiny_model


def get_config():
  config = base_config()
  config.workdir = "runs/tiny"
  use_tiny_model(config, chat_template="chatml")
  config.sampler.max_new_tokens = 16
  return config
