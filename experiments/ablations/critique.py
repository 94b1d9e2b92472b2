"""Ablation: critique then revise vs revise directly (paper §3.5, Fig. 7).

  python -m cai_jax sweep --config experiments/ablations/critique.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/critique.py            # SmolLM2-135M

sl_data.mode = critique | direct (the revision request without a critique first); each
point runs SL-CAI, SFT and the measurements. Outcomes: the evaluator's score of the final
revisions (the paper's form: critiques helped small models most), the SFT policy's
harmlessness on held-out red-team prompts and its evaluator score on helpful prompts.
Plot: <workdir>/sweep/critique.png (categorical x).
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "critique")
  s = config.sweep
  s.name, s.title, s.x_label = "critique", "Critiqued vs direct revisions", "sl_data.mode"
  s.field, s.grid = "sl_data.mode", ("critique", "direct")
  s.stages = "sl-data,sft,eval-harmless,eval-helpful"
  s.outcomes = "sl_harmlessness,harmlessness,helpfulness"
  return config
