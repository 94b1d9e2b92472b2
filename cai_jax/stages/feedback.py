"""Stage `feedback`: AI preference labels for pairs of the policy's answers.

  python -m cai_jax feedback --config experiments/embedded.py

The policy (feedback.policy; default this workdir's SFT export if present,
else config.model) answers each prompt twice; the feedback model (config.model)
labels the pair by its (A)/(B) log-probabilities under sampled principles
(cai/labels.py). Writes <workdir>/feedback/feedback.jsonl and feedback.settings.json.
Resumable: a killed run continues from its shards and writes what an unbroken run writes
(each prompt's answers are seeded by its id); a rerun with other settings is refused,
naming the changed fields; one run at a time. On several hosts each answers its share of
the prompts and host 0 merges them in prompt order. The workdir may be gs://... .
"""

from __future__ import annotations

import dataclasses

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


def answer_pairs(sampler: TextSampler, max_new_tokens: int):
  """Prompt records -> two chat answers each: draws 1 and 2 (steps) of the row seeded by the
  prompt's id, so a prompt's pair is the same whatever its batch, resume point or host."""
  def fn(prompts):
    convs = [[{"role": "user", "content": p.text}] for p in prompts]
    rows = [labels.row_id(p.id) for p in prompts]
    first, second = (sampler.chat(convs, step=k, row_ids=rows, max_new_tokens=max_new_tokens)
                     for k in (1, 2))
    return list(zip(first, second))

  return fn


def reasoning_fn(sampler: TextSampler, max_new_tokens: int):
  """Feedback prompts -> the judge's chain of thought, each row seeded by its prompt's text
  (which holds the conversation, the question and both answers)."""
  return lambda texts: sampler.complete(list(texts), step=3, max_new_tokens=max_new_tokens,
                                        row_ids=[labels.row_id(t) for t in texts])


def run(config) -> dict:
  c, layout, host = config.feedback, common.layout(config), common.host()
  source, why = layout.start_model(c.policy, config.model.source)
  # The constitution section's (feedback.constitution/profile override its path and profiles).
  constitution = constitution_stage.from_config(config, "feedback", few_shot="")
  prompts = load_prompts(common.repo_path(c.prompts), limit=common.limit(c.n_prompts))
  settings = common.sampler_settings(config)
  s = labels.FeedbackSettings(k_principles=c.k_principles, hard_labels=c.hard_labels, cot=c.cot,
                              clamp_lo=c.clamp_lo, clamp_hi=c.clamp_hi, swap=c.swap, seed=config.seed)
  prefix = few_shot(c)
  # What decides the records: both models, the labelling rules, the sampler (not its batch
  # size: rows are seeded by prompt ids), the principles and the few-shot prefix.
  described = {"policy": common.answer_settings(config, common.model_spec(config, source), settings),
               "judge": dataclasses.asdict(common.model_spec(config)),
               "labels": dataclasses.asdict(s), "cot_max_new_tokens": c.cot_max_new_tokens,
               "constitution": [p.content() for p in constitution.principles],
               "few_shot": prefix}
  if constitution.tier_weights:
    described["tier_weights"] = dict(constitution.tier_weights)
  out = layout.feedback
  with common.generation_lock(out.parent, host):
    common.check_output_settings(layout.settings_of(out), described,
                                 f"the feedback records in {out}", host)
    mesh = common.generation_mesh(config)
    judge = common.load(config, mesh, rules="sample")
    common.say_start_model("feedback (policy)", source, why)
    policy = judge if source == config.model.source else common.load(config, mesh, "sample", source)
    policy_sampler = TextSampler(policy, settings, mesh=mesh, seed=config.seed)
    judge_sampler = TextSampler(judge, settings, mesh=mesh, seed=config.seed + 1)
    reasoning = reasoning_fn(judge_sampler, c.cot_max_new_tokens) if c.cot else None
    n = labels.write_feedback(prompts, answer_pairs(policy_sampler, settings.max_new_tokens),
                              constitution, judge_sampler.logprobs, out, s, prefix, reasoning,
                              batch_size=settings.batch_size, host=host, sync=common.barrier,
                              settings=described)
  return common.finish("feedback", dict(out=str(out), new_records=n, policy=source,
                                        judge=judge.source, hosts=host.count,
                                        constitution=constitution_stage.describe(constitution)))
