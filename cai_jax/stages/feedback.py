"""Stage `feedback`: AI preference labels for pairs of the policy's answers.

  python -m cai_jax feedback --config experiments/embedded.py

The policy (feedback.policy; default this workdir's SFT export if present,
else config.model) answers each prompt twice; the feedback model (config.model)
labels the pair by its (A)/(B) log-probabilities under sampled principles
(cai/labels.py). Writes <workdir>/feedback/feedback.jsonl; a rerun resumes.
"""

from __future__ import annotations

import itertools

from cai_jax.cai import labels
from cai_jax.data.prompts import load_prompts
from cai_jax.sampling import TextSampler
from cai_jax.stages import common
from cai_jax.stages import constitution as constitution_stage


def few_shot(c) -> str:
  """The solved-examples prefix named by feedback.few_shot / n_few_shot."""
  if c.few_shot == "none" or c.n_few_shot == 0:
    return ""
  if c.few_shot == "ours":
    return labels.few_shot_prefix(labels.OUR_FEW_SHOT[:c.n_few_shot])
  return labels.few_shot_prefix(labels.load_paper_few_shot(common.repo_path(c.few_shot))[:c.n_few_shot])


def counted(sampler: TextSampler, max_new_tokens: int, chat: bool):
  """texts -> one sample each; call k draws with fold_in(key, k) (k = 1, 2, ...)."""
  calls = itertools.count(1)
  method = sampler.chat if chat else sampler.complete

  def fn(texts):
    inputs = [[{"role": "user", "content": t}] for t in texts] if chat else list(texts)
    return method(inputs, step=next(calls), max_new_tokens=max_new_tokens)

  return fn


def run(config) -> dict:
  c, layout = config.feedback, common.layout(config)
  mesh = common.eval_mesh(config)
  judge = common.load(config, mesh, rules="sample")
  source, why = layout.start_model(c.policy, config.model.source)
  common.say_start_model("feedback (policy)", source, why)
  policy = judge if source == config.model.source else common.load(config, mesh, "sample", source)
  # The constitution section's (feedback.constitution/profile override its path and profiles).
  constitution = constitution_stage.from_config(config, "feedback", few_shot="")
  prompts = load_prompts(common.repo_path(c.prompts), limit=common.limit(c.n_prompts))
  settings = common.sampler_settings(config)
  policy_sampler = TextSampler(policy, settings, mesh=mesh, seed=config.seed)
  judge_sampler = TextSampler(judge, settings, mesh=mesh, seed=config.seed + 1)
  sample = counted(policy_sampler, settings.max_new_tokens, chat=True)
  sample_pair = lambda texts: list(zip(sample(texts), sample(texts)))  # noqa: E731
  reasoning = counted(judge_sampler, c.cot_max_new_tokens, chat=False) if c.cot else None
  s = labels.FeedbackSettings(k_principles=c.k_principles, hard_labels=c.hard_labels, cot=c.cot,
                              clamp_lo=c.clamp_lo, clamp_hi=c.clamp_hi, swap=c.swap, seed=config.seed)
  out = layout.feedback
  n = labels.write_feedback(prompts, sample_pair, constitution, judge_sampler.logprobs, out, s,
                            few_shot(c), reasoning, batch_size=settings.batch_size)
  return common.finish("feedback", dict(out=str(out), new_records=n, policy=source,
                                        judge=judge.source,
                                        constitution=constitution_stage.describe(constitution)))
