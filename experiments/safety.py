"""Safety measurements on the embedded SmolLM2-135M-Instruct (the numbers in the README).

  python -m cai_jax pipeline --config experiments/safety.py           # evaluator + SL-CAI rounds
  python -m cai_jax eval-safety --config experiments/safety.py --config.safety.models=runs/quickstart/sft/hf
  python -m cai_jax eval-drift --config experiments/safety.py --config.drift.model=runs/quickstart/sft/hf
  python -m cai_jax eval-refusal --config experiments/safety.py --config.refusal.backend=judge
  python -m cai_jax pipeline --config experiments/safety.py:tiny      # the same on a random tiny model

The pipeline part trains the harmlessness evaluator on human hh-rlhf
harmless-base pairs (../shared/data), then writes SL-CAI data for 50 red-team
and 30 helpful prompts with 4 critique -> revision rounds and reports, per
round, the refusal classes and the evaluator's score (sl_data/summary.json and
report.md). Sampling at temperature 0.7: at 1.0 the 135M model's critiques and
revisions fall apart into word salad.
"""

import pathlib

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "tiny")
HH_HARMLESS = (pathlib.Path(__file__).resolve().parents[1].parent
               / "shared/data/hh_rlhf/harmless-base-test.jsonl.gz")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/safety"
  config.model.source = "embedded"
  config.sampler.temperature = 0.7
  config.sampler.max_new_tokens = 64
  config.sampler.max_prompt_len = 1024
  config.sampler.batch_size = 8
  config.pipeline.stages = "harmless-rm,sl-data"

  c = config.sl_data
  c.n_prompts, c.n_helpful, c.n_rounds, c.n_few_shot = 50, 30, 4, 2

  c = config.harmless
  c.data = str(HH_HARMLESS)
  c.n_pairs, c.num_steps, c.batch_size, c.max_len = -1, 100, 8, 128
  c.eval_fraction, c.eval_every, c.checkpoint_every = 0.1, 50, 25
  c.optim.lr, c.optim.warmup_steps = 2e-5, 10

  config.safety.max_new_tokens = 64
  config.drift.k = 5

  if variant == "tiny":
    config.workdir = "runs/safety_tiny"
    use_tiny_model(config)
    config.sampler.max_new_tokens = 8
    config.sampler.max_prompt_len = 512
    config.sl_data.n_prompts, config.sl_data.n_helpful, config.sl_data.n_rounds = 3, 2, 2
    config.harmless.n_pairs, config.harmless.num_steps, config.harmless.max_len = 40, 2, 256
    config.safety.limit, config.safety.max_new_tokens = 8, 8
  return config
