"""Ablation: the AI preference labels: soft vs hard vs chain-of-thought, clamped or not
(paper §4.1-4.3: soft labels beat 0/1 labels; CoT labels needed clamping to 40-60%).

  python -m cai_jax sweep --config experiments/ablations/labels.py:runlocal   # tiny, ~1 min
  python -m cai_jax sweep --config experiments/ablations/labels.py            # SmolLM2-135M

sl-data and SFT are shared per seed; each point labels the SFT policy's answer pairs its
own way (feedback), trains a reward model on them and runs PPO against it. Outcomes:
the PPO policy's harmlessness and its over-refusal / unsafe-compliance rates.
Plot: <workdir>/sweep/labels.png.
"""

from cai_jax.config import ConfigDict, experiment_config, sibling_module

common = sibling_module(__file__, "common")

VARIANTS = ("", "runlocal")

POINTS = (
    dict(label="soft", overrides={"feedback.hard_labels": False, "feedback.cot": False}),
    dict(label="hard", overrides={"feedback.hard_labels": True, "feedback.cot": False}),
    dict(label="CoT clamped 40-60%", overrides={"feedback.cot": True, "feedback.clamp_lo": 0.4,
                                                "feedback.clamp_hi": 0.6}),
    dict(label="CoT unclamped", overrides={"feedback.cot": True, "feedback.clamp_lo": 0.0,
                                           "feedback.clamp_hi": 1.0}),
)


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  common.sized(config, variant, "labels")
  if variant == "runlocal":
    config.feedback.cot_max_new_tokens = 8
  s = config.sweep
  s.name, s.title, s.x_label = "labels", "AI preference labels", "labels"
  s.points = POINTS
  s.shared_stages = "sl-data,sft"
  s.stages = "feedback,rm,ppo,eval-harmless,eval-safety"
  s.outcomes = "harmlessness,orr,ucr"
  return config
