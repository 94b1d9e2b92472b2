"""Stage `eval-mc`: accuracy of config.model on a multiple-choice JSONL (last stdout line: JSON).

  python -m cai_jax eval-mc --config experiments/embedded.py --data FILE.jsonl
"""

from __future__ import annotations

from cai_jax.evals import multiple_choice as mc
from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def run(config) -> dict:
  e = config.eval
  if not e.data:
    raise SystemExit("eval-mc: give the data file with --data PATH (or --config.eval.data=PATH)")
  items = mc.load_mc_jsonl(e.data)
  if e.limit > 0:
    items = items[:e.limit]
  mesh = common.eval_mesh(config)
  loaded = common.load(config, mesh, rules="sample")
  scorer = TextSampler(loaded, common.sampler_settings(
      config, batch_size=e.batch_size, max_prompt_len=e.max_prompt_len), mesh=mesh)
  result = mc.score_items(items, scorer.logprobs)
  return common.finish("eval-mc", dict(data=str(e.data), model=loaded.source, **result.summary()))
