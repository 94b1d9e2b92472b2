"""Ablation: how many principles the constitution has (paper §3.4, Fig. 6): 1, 2, 4, 8, 16.

  python -m cai_jax sweep --config experiments/ablations/principles.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/principles.py            # SmolLM2-135M

Each point keeps constitution.n_principles principles of constitutions/base.toml, the
subset drawn with constitution.subset_seed (fixed, so the 2-principle constitution is
the same at every seed), and runs SL-CAI with it, then SFT. Outcomes: the evaluator's
score of the final revisions (the paper's form; it found no significant effect on
harmlessness) and the SFT policy's harmlessness on held-out red-team prompts.
Plot: <workdir>/sweep/principles.png (log2 x axis).
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "principles")
  config.constitution.subset_seed = 0
  s = config.sweep
  s.name, s.title, s.x_label = "principles", "Number of constitutional principles", "principles"
  s.field, s.grid, s.x_scale = "constitution.n_principles", (1, 2, 4, 8, 16), "log"
  s.stages = "sl-data,sft,eval-harmless"
  s.outcomes = "sl_harmlessness,harmlessness"
  return config
