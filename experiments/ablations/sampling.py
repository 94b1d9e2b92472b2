"""Ablation (ours, not the paper's): how principles are drawn: uniformly over all of them,
or tier first (constitution.tier_weights) and then a principle within the tier.

  python -m cai_jax sweep --config experiments/ablations/sampling.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/sampling.py            # SmolLM2-135M

constitutions/base.toml has 9 universal, 7 contextual and 4 style principles, so uniform
draws give the universal tier 45% of critiques and tiered draws with equal tier weights
give it 33%, and the style tier 33% instead of 20%. Each point runs SL-CAI and SFT with
its sampling. Outcomes: the evaluator's score of the final revisions, the SFT policy's
harmlessness and its over-refusal / unsafe-compliance rates.
Plot: <workdir>/sweep/sampling.png.
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "sampling")
  config.constitution.tier_weights = "universal=1,contextual=1,style=1"
  s = config.sweep
  s.name, s.title, s.x_label = "sampling", "Principle sampling", "constitution.sampling"
  s.field, s.grid = "constitution.sampling", ("uniform", "tiered")
  s.stages = "sl-data,sft,eval-harmless,eval-safety"
  s.outcomes = "sl_harmlessness,harmlessness,orr,ucr"
  return config
