"""Ablation: how many critique -> revision rounds (paper §3.4, Fig. 5): 0-4 vs harmlessness.

  python -m cai_jax sweep --config experiments/ablations/revisions.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/revisions.py            # SmolLM2-135M

One sl-data run with 4 rounds per seed is shared by every point (sweep.shared_stages);
point r fine-tunes on round r's revisions only (sft.rounds = "r") and is measured.
Point 0 is the model before SL-CAI: the paper's round 0 is the initial answers, which
that model wrote, and SFT on a model's own samples leaves it where it was, so point 0
trains nothing. Outcomes: the evaluator's score of round r's revision texts (the
paper's form: no training involved), the SFT policy's harmlessness on held-out
red-team prompts and its score on helpful prompts (the paper saw harmlessness rise
and helpfulness fall with more revisions). Plot: <workdir>/sweep/revisions.png.
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")
MEASURE = "eval-harmless,eval-helpful"


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "revisions")
  n_rounds = 2 if variant == "runlocal" else 4
  config.sl_data.n_rounds = n_rounds
  s = config.sweep
  s.name, s.title, s.x_label = "revisions", "Number of revisions", "number of revisions"
  s.shared_stages = "sl-data"
  s.stages = f"sft,{MEASURE}"
  s.points = tuple([dict(label="0", x=0, overrides={"sweep.stages": MEASURE})] +
                   [dict(label=str(r), x=r, overrides={"sft.rounds": str(r)})
                    for r in range(1, n_rounds + 1)])
  s.outcomes = "round_harmlessness,harmlessness,helpfulness"
  return config
