"""SL-CAI data with the embedded SmolLM2-135M-Instruct: answer, then critique -> revision rounds.

  python -m cai_jax sl-data --config experiments/sl_cai.py
  python -m cai_jax sl-data --config experiments/sl_cai.py:quick     # 3 prompts, 1 round, T 0.7, CPU
  python -m cai_jax sl-data --config experiments/sl_cai.py --config.sl_data.mode=direct \
      --config.workdir=runs/sl_cai_direct                              # ablation: revise without critique

Rerunning the same command resumes from the last complete record. The paper's
own principles: --config.constitution.path=paper:../shared/data/cai_paper/prompts
(--config.sl_data.constitution=... gives this stage alone its own).
"""

from cai_jax.config import ConfigDict, experiment_config

VARIANTS = ("", "quick")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/sl_cai"
  config.model.source = "embedded"
  config.sampler.temperature = 1.0  # the paper samples critiques and revisions at T = 1
  config.sampler.max_new_tokens = 160
  config.sampler.max_prompt_len = 2048
  config.sl_data.n_rounds = 4
  config.sl_data.n_few_shot = 5
  if variant == "quick":
    config.workdir = "runs/sl_cai_quick"
    config.sampler.max_new_tokens = 96
    config.sampler.temperature = 0.7  # at T = 1 the 135M model's text falls apart into word salad
    config.sl_data.n_prompts = 3
    config.sl_data.n_helpful = 0
    config.sl_data.n_rounds = 1
    config.sl_data.n_few_shot = 2
  return config
