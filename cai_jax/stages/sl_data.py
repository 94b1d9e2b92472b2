"""Stage `sl-data`: red-team prompts -> answers -> critique/revision rounds -> sl_cai.jsonl.

  python -m cai_jax sl-data --config experiments/sl_cai.py

Writes <workdir>/sl_data/sl_cai.jsonl and sl_cai.settings.json (the settings that made
the records). Resumable: a killed run continues from what its shards hold, and writes the
records an unbroken run writes; a rerun with other settings is refused, naming the changed
fields; a second run on the same workdir at once is refused. On several hosts
(config.distributed) each host generates its share of the prompts and host 0 merges them:
the same file as one host's. The workdir may be gs://... . The method lives in
cai/revision.py; this file turns config.sl_data into its calls.
"""

from __future__ import annotations

import dataclasses

from cai_jax import constitution as constitution_lib
from cai_jax.cai import revision
from cai_jax.data.prompts import load_prompts
from cai_jax.sampling import TextSampler
from cai_jax.stages import common
from cai_jax.stages import constitution as constitution_stage


def load_constitution(config) -> constitution_lib.Constitution:
  """The constitution section's constitution (sl_data.constitution/profile override its path
  and profiles) with sl_data's few-shot examples."""
  c = config.sl_data
  few_shot = {"": None, "none": ""}.get(c.few_shot, common.repo_path(c.few_shot))
  return constitution_stage.from_config(config, "sl_data", few_shot=few_shot)


def run(config) -> dict:
  c, layout, host = config.sl_data, common.layout(config), common.host()
  constitution = load_constitution(config)
  red = load_prompts(common.repo_path(c.prompts), limit=common.limit(c.n_prompts))
  helpful = (load_prompts(common.repo_path(c.helpful_prompts), limit=common.limit(c.n_helpful))
             if c.n_helpful != 0 else [])
  sampler_settings = common.sampler_settings(config)
  settings = revision.SLDataSettings(n_rounds=c.n_rounds, mode=c.mode, n_few_shot=c.n_few_shot,
                                     seed=config.seed)
  # What determines the records' content: not how many prompts, not the batch size.
  described = {**dataclasses.asdict(settings), **dataclasses.asdict(sampler_settings)}
  del described["batch_size"]
  described_run = {"model": config.model.to_dict(), "seed": config.seed, "settings": described,
                   "constitution": [p.content() for p in constitution.principles],
                   "few_shot": [dataclasses.asdict(e) for e in constitution.few_shot]}
  if constitution.tier_weights:  # only then: uniform runs keep the fingerprints they always had
    described_run["tier_weights"] = dict(constitution.tier_weights)
  fp = revision.fingerprint(described_run)
  out = layout.sl_data
  with common.generation_lock(out.parent, host):
    # Settings first: a changed recipe is refused before the model loads.
    common.check_output_settings(layout.settings_of(out), described_run,
                                 f"the sl-data records in {out}", host)
    mesh = common.generation_mesh(config)
    model = common.load(config, mesh, rules="sample")
    common.say_start_model("sl-data", model.source, "config.model")
    sampler = TextSampler(model, sampler_settings, mesh=mesh, seed=config.seed)
    summary = revision.generate_sl_data(sampler, constitution, red, helpful, out, settings, fp=fp,
                                        host=host, sync=common.barrier)
  summary["constitution"] = constitution_stage.describe(constitution)
  if host.index != 0:  # the merged records, their quality and the summary are host 0's
    return common.finish("sl-data", summary)
  summary["quality"] = quality(config, layout, sampler, mesh)
  return common.finish("sl-data", summary, layout.stage_dir("sl-data") / "summary.json")


def quality(config, layout, sampler: TextSampler, mesh) -> dict:
  """Refusal classes (and harmlessness, when an evaluator is there) per revision round."""
  from cai_jax.data.jsonl import iter_jsonl
  from cai_jax.evals import refusal, sl_quality

  records = [r for _, r in iter_jsonl(layout.sl_data)]
  backend = config.refusal.backend
  judge = (TextSampler(sampler.model, common.judge_settings(config), mesh=mesh, seed=config.seed)
           if backend == "judge" else None)
  classify = lambda prompts, answers: refusal.classify(  # noqa: E731
      prompts, answers, backend=backend, judge=judge)
  score_fn, evaluator = harmlessness_scorer(config, sampler, mesh)
  table = sl_quality.round_table(records, classify, score_fn)
  for kind, rows in table.items():
    for row in rows:
      common.log.info("sl-data quality %s round %d: n %d, refusal %.2f [%.2f, %.2f]%s", kind,
                      row["round"], row["n"], row["refusal_rate"], *row["refusal_ci95"],
                      f", harmless {row['harmless']:.3f}" if "harmless" in row else "")
  return {"classifier": backend, "evaluator": evaluator, **table}


def harmlessness_scorer(config, sampler: TextSampler, mesh):
  """(score_fn(prompts, answers) -> scores, evaluator dir) from the harmlessness evaluator
  (eval_harmless.load_evaluator); (None, None) when there is none yet."""
  from cai_jax.evals import harmlessness
  from cai_jax.stages import eval_harmless

  try:
    reward = eval_harmless.load_evaluator(config, mesh, text_model=sampler.model)
  except FileNotFoundError as e:
    common.log.info("sl-data quality: %s; refusal classes only", e)
    return None, None
  return ((lambda prompts, answers: harmlessness.score_answers(reward, prompts, answers)),
          str(eval_harmless.evaluator_dir(config)))
