"""A tiny random model, for smoke tests and CI.

  python -m cai_jax info --config experiments/tiny.py
"""

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("",)


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/tiny"
  use_tiny_model(config, chat_template="chatml")
  config.sampler.max_new_tokens = 16
  return config
