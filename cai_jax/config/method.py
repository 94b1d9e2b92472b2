"""Config sections: the method's data stages: SL-CAI revisions (sl_data) and AI preference labels (feedback)."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator


@section("sl_data")
def _sl_data() -> ConfigDict:
  # Stage `sl-data` (stages/sl_data.py -> cai/revision.py); sampling settings come from `sampler`.
  # Writes <workdir>/sl_data/sl_cai.jsonl (layout.py).
  return ConfigDict(dict(
      prompts="red_team",  # built-in set (red_team | helpful) or a JSONL(.gz) path, e.g. hh-rlhf
      n_prompts=-1,  # -1 = all
      helpful_prompts="helpful",  # answered once each, no critique rounds
      n_helpful=-1,  # -1 = all, 0 = none
      n_rounds=4,  # critique -> revision rounds per red-team prompt (paper: 4)
      mode="critique",  # critique | direct (revision without a critique, for the ablation)
      n_few_shot=5,  # few-shot examples in the prefix (paper: 5)
      constitution="",  # "" = constitution.path; else this stage's own (TOML path or "paper:<dir>")
      profile="",  # "" = constitution.profiles; else this stage's own comma list ("none" = no profile)
      few_shot="",  # "" = the constitution's own few-shot file; "none" = no examples; or a TOML path
  ))


@section("feedback")
def _feedback() -> ConfigDict:
  # Stage `feedback` (stages/feedback.py -> cai/labels.py): AI preference labels by the multiple-choice prompt.
  return ConfigDict(dict(
      policy="",  # weights path; "" = <workdir>/sft/hf if present, else config.model (layout.py)
      prompts="red_team",  # prompt spec (data/prompts.py)
      n_prompts=-1,
      constitution="",  # "" = constitution.path; else this stage's own ("paper:<dir>": the paper's 16)
      profile="",  # "" = constitution.profiles; else this stage's own comma list ("none" = no profile)
      few_shot="ours",  # ours | none | a path to the paper's RLMadisonFewShotPrompts.json
      n_few_shot=2,
      k_principles=1,  # ensemble: average the label over k principles drawn per comparison
      hard_labels=False,  # round p_a to 0/1
      cot=False,  # chain-of-thought: sample reasoning, then read P(A)/P(B)
      cot_max_new_tokens=64,
      clamp_lo=0.4,  # cot: soft labels are clamped into [clamp_lo, clamp_hi] (paper: 40-60%)
      clamp_hi=0.6,
      swap=True,  # average over both A/B orders (cancels position bias)
  ))


@validator("sl_data")
def _validate_sl_data(c: ConfigDict) -> None:
  if c.mode not in ("critique", "direct"):
    raise ValueError(f"sl_data.mode: {c.mode!r}; expected critique or direct")
  for field in ("n_prompts", "n_helpful"):
    if c[field] < -1:
      raise ValueError(f"sl_data.{field}: must be -1 (all), 0 or positive, got {c[field]}")
  for field in ("n_rounds", "n_few_shot"):
    if c[field] < 0:
      raise ValueError(f"sl_data.{field}: must be >= 0, got {c[field]}")


@validator("feedback")
def _validate_feedback(c: ConfigDict) -> None:
  if c.k_principles < 1:
    raise ValueError(f"feedback.k_principles: expected >= 1, got {c.k_principles}")
  if c.n_prompts == 0 or c.n_prompts < -1:
    raise ValueError(f"feedback.n_prompts: expected -1 (all) or a positive count, got {c.n_prompts}")
  if c.n_few_shot < 0:
    raise ValueError(f"feedback.n_few_shot: must be >= 0, got {c.n_few_shot}")
  if c.cot_max_new_tokens < 1:
    raise ValueError(f"feedback.cot_max_new_tokens: must be >= 1, got {c.cot_max_new_tokens}")
  if not 0.0 <= c.clamp_lo <= 0.5 <= c.clamp_hi <= 1.0:
    raise ValueError(f"feedback.clamp_lo/clamp_hi: expected 0 <= lo <= 0.5 <= hi <= 1, "
                     f"got [{c.clamp_lo}, {c.clamp_hi}]")
