"""Config sections: the measurements: eval (multiple choice, HHH), refusal classes, safety, harmlessness, drift."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator, optim_section, validate_optim


@section("eval")
def _eval() -> ConfigDict:
  # Stages `eval-mc` (evals/multiple_choice.py) and `eval-hhh` (evals/hhh.py).
  return ConfigDict(dict(
      data="",  # eval-mc: JSONL of {"prompt", "corrects", "incorrects"} (CLI: --data PATH)
      hhh="../shared/data/cai_paper/evals/438HHHEvaluations.jsonl",  # eval-hhh data
      limit=-1,  # first N items only (quick runs); -1 = all
      batch_size=8,
      max_prompt_len=2048,  # longer prompts keep their last tokens
      judge=True,  # eval-hhh: the LM as multiple-choice judge
      cot=False,  # eval-hhh: also the judge with chain-of-thought (sampled reasoning first)
      cot_limit=-1,  # CoT on the first N items only; -1 = same as limit
      cot_max_new_tokens=64,
      reward_model="",  # eval-hhh: a trained reward model dir (<rm workdir>/rm/model) to score; "" = none
  ))


@section("refusal")
def _refusal() -> ConfigDict:
  # Refusal classes (evals/refusal.py): full_compliance | full_refusal | partial_refusal.
  # Used by eval-refusal (agreement with labels), eval-safety and sl-data's per-round table.
  return ConfigDict(dict(
      backend="rules",  # rules (phrase detector, no model) | judge (config.model, class-letter log-probs)
      data="",  # eval-refusal: JSONL {"prompt", "completion", "label"}; "" = our labelled set
  ))


@section("safety")
def _safety() -> ConfigDict:
  # Stage `eval-safety` (evals/safety.py): over-refusal rate (ORR) on safe prompts vs
  # unsafe-compliance rate (UCR) on unsafe ones, XSTest-style. Answers are sampled with
  # config.sampler (same seed for every model) and classified by refusal.backend.
  return ConfigDict(dict(
      data="",  # JSONL {"id"?, "prompt", "label": "safe"|"unsafe", "type"?}; "" = our prompt set
      limit=-1,  # first N prompts; -1 = all (our file interleaves types, so any N mixes them)
      models="",  # comma-separated further model sources, run on the same prompts (McNemar); "" = none
      max_new_tokens=64,  # per answer (replaces sampler.max_new_tokens here)
  ))


@section("harmless")
def _harmless() -> ConfigDict:
  # Harmlessness score (evals/harmlessness.py): an evaluator reward model trained on human
  # harmlessness pairs by stage `harmless-rm` (kept apart from the policy's AI labels);
  # stage `eval-harmless` scores a model's answers with it against a baseline's answers.
  return ConfigDict(dict(
      data="../shared/data/hh_rlhf/harmless-base-test.jsonl.gz",  # hh-rlhf {"chosen", "rejected"}
      n_pairs=-1,  # cap on pairs read; -1 = all
      max_len=256,
      batch_size=8,
      num_steps=200,
      eval_fraction=0.1,
      eval_every=50,
      checkpoint_every=50,
      keep=2,
      seed=0,
      optim=optim_section(lr=1e-5, warmup_steps=10),
      model="",  # evaluator reward-model dir; "" = <workdir>/harmless_rm/model
      policy="",  # model whose answers are scored; "" = <workdir>/sft/hf if present, else config.model
      baseline="",  # model whose answers it is compared with; "" = config.model
      prompts="red_team",  # prompt spec (data/prompts.py) of the scored prompts
      n_prompts=-1,  # first N prompts; -1 = all
      max_new_tokens=64,
  ))


@section("drift")
def _drift() -> ConfigDict:
  # First-token drift (evals/drift.py): KL(current || reference) per response position over
  # the first k tokens of the reference's answers to harmful prompts; judge-free.
  return ConfigDict(dict(
      model="",  # current model; "" = <workdir>/sft/hf if present, else config.model
      reference="",  # frozen reference; "" = config.model
      prompts="red_team",
      n_prompts=-1,
      k=5,  # response positions compared
      refusal_opening="I'm sorry, but I can't help with that.",  # its log-prob is reported
  ))


@validator("eval")
def _validate_eval(c: ConfigDict) -> None:
  for field in ("batch_size", "max_prompt_len", "cot_max_new_tokens"):
    if c[field] < 1:
      raise ValueError(f"eval.{field}: must be >= 1, got {c[field]}")
  for field in ("limit", "cot_limit"):
    if c[field] == 0 or c[field] < -1:
      raise ValueError(f"eval.{field}: expected -1 (all) or a positive count, got {c[field]}")
  if c.cot and not c.judge:
    raise ValueError("eval.cot: the chain-of-thought judge runs only with eval.judge=True "
                     "(got judge=False, cot=True, which would evaluate nothing with CoT)")


@validator("refusal")
def _validate_refusal(c: ConfigDict) -> None:
  if c.backend not in ("rules", "judge"):
    raise ValueError(f"refusal.backend: {c.backend!r}; expected rules (phrase detector) or "
                     "judge (config.model scoring the class letters)")


@validator("safety")
def _validate_safety(c: ConfigDict) -> None:
  if c.limit == 0 or c.limit < -1:
    raise ValueError(f"safety.limit: must be -1 (all) or positive, got {c.limit}")
  if c.max_new_tokens < 1:
    raise ValueError(f"safety.max_new_tokens: must be >= 1, got {c.max_new_tokens}")
  if any(not m.strip() for m in c.models.split(",")) and c.models.strip():
    raise ValueError(f"safety.models: {c.models!r} has an empty entry; expected e.g. 'PATH1,PATH2'")


@validator("harmless")
def _validate_harmless(c: ConfigDict) -> None:
  if not 0.0 < c.eval_fraction < 1.0:
    raise ValueError(f"harmless.eval_fraction: expected in (0, 1), got {c.eval_fraction}")
  if c.batch_size < 1 or c.num_steps < 0 or c.max_len < 8:
    raise ValueError("harmless.batch_size/num_steps/max_len: expected >= 1 / >= 0 / >= 8, got "
                     f"{c.batch_size} / {c.num_steps} / {c.max_len}")
  for field in ("n_pairs", "n_prompts"):
    if c[field] == 0 or c[field] < -1:
      raise ValueError(f"harmless.{field}: expected -1 (all) or a positive count, got {c[field]}")
  for field in ("max_new_tokens", "keep"):
    if c[field] < 1:
      raise ValueError(f"harmless.{field}: must be >= 1, got {c[field]}")
  for field in ("eval_every", "checkpoint_every"):
    if c[field] < 0:
      raise ValueError(f"harmless.{field}: must be >= 0 (0 = off), got {c[field]}")
  validate_optim(c.optim, "harmless.optim")


@validator("drift")
def _validate_drift(c: ConfigDict) -> None:
  if c.k < 1:
    raise ValueError(f"drift.k: must be >= 1 (response positions compared), got {c.k}")
  if c.n_prompts == 0 or c.n_prompts < -1:
    raise ValueError(f"drift.n_prompts: must be -1 (all) or positive, got {c.n_prompts}")
  if not c.prompts:
    raise ValueError("drift.prompts: empty; expected a prompt set name (red_team) or a JSONL path")
  if not c.refusal_opening.strip():
    raise ValueError("drift.refusal_opening: empty; its log-probability is part of the summary")
