"""Ablation: how the SFT policy learns from AI feedback: reward model + PPO (RL-CAI), DPO,
or PPO with the feedback model's own score as the reward (d-RLAIF, Lee et al. 2023).

  python -m cai_jax sweep --config experiments/ablations/rl_method.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/rl_method.py            # SmolLM2-135M

sl-data, SFT and the AI labels (feedback) are shared per seed, so every method learns
from the same policy and the same preference pairs; the "SFT only" point measures that
starting policy itself. Outcomes: the trained policy's
harmlessness on held-out red-team prompts, its evaluator score on helpful prompts and its
over-refusal / unsafe-compliance rates. Plot: <workdir>/sweep/rl_method.png.
The d-RLAIF point needs ppo.reward="feedback" (stages/ppo.py).
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")

MEASURE = "eval-harmless,eval-helpful,eval-safety"
POINTS = (
    dict(label="SFT only", overrides={"sweep.stages": MEASURE}),  # where every method starts
    dict(label="RM + PPO", overrides={"sweep.stages": f"rm,ppo,{MEASURE}"}),
    dict(label="DPO", overrides={"sweep.stages": f"dpo,{MEASURE}"}),
    dict(label="d-RLAIF", overrides={"sweep.stages": f"ppo,{MEASURE}", "ppo.reward": "feedback"}),
)


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "rl_method")
  s = config.sweep
  s.name, s.title, s.x_label = "rl_method", "Learning from AI feedback", "method"
  s.points = POINTS
  s.shared_stages = "sl-data,sft,feedback"
  s.outcomes = "harmlessness,helpfulness,orr,ucr"
  return config
