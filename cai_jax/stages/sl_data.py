"""Stage `sl-data`: red-team prompts -> answers -> critique/revision rounds -> sl_cai.jsonl.

  python -m cai_jax sl-data --config experiments/sl_cai.py

Writes <workdir>/sl_data/sl_cai.jsonl (append-only; a rerun resumes). The
method lives in cai/revision.py; this file turns config.sl_data into its calls.
"""

from __future__ import annotations

import dataclasses

from cai_jax import constitution as constitution_lib
from cai_jax.cai import revision
from cai_jax.data.prompts import load_prompts
from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def load_constitution(c) -> constitution_lib.Constitution:
  """The constitution (+ profile, few-shot examples) named by a config section."""
  few_shot = {"": None, "none": ""}.get(c.few_shot, common.repo_path(c.few_shot))
  return constitution_lib.load(common.repo_path(c.constitution),
                               profile=common.repo_path(c.profile) or None, few_shot=few_shot)


def run(config) -> dict:
  c = config.sl_data
  mesh = common.mesh(config)
  model = common.load(config, mesh, rules="sample")
  common.say_start_model("sl-data", model.source, "config.model")
  constitution = load_constitution(c)
  red = load_prompts(common.repo_path(c.prompts), limit=common.limit(c.n_prompts))
  helpful = (load_prompts(common.repo_path(c.helpful_prompts), limit=common.limit(c.n_helpful))
             if c.n_helpful != 0 else [])
  sampler_settings = common.sampler_settings(config)
  settings = revision.SLDataSettings(n_rounds=c.n_rounds, mode=c.mode, n_few_shot=c.n_few_shot,
                                     seed=config.seed)
  # What determines the records' content: not how many prompts, not the batch size.
  described = {**dataclasses.asdict(settings), **dataclasses.asdict(sampler_settings)}
  del described["batch_size"]
  fp = revision.fingerprint({"model": config.model.to_dict(), "seed": config.seed,
                             "settings": described,
                             "constitution": [dataclasses.asdict(p) for p in constitution.principles],
                             "few_shot": [dataclasses.asdict(e) for e in constitution.few_shot]})
  sampler = TextSampler(model, sampler_settings, mesh=mesh, seed=config.seed)
  out = common.layout(config).sl_data
  return revision.generate_sl_data(sampler, constitution, red, helpful, out, settings, fp=fp)
