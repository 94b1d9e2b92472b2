"""Stage `eval-hhh`: the CAI paper's 438 HHH comparisons (evals/hhh.py) for config.model
as a multiple-choice judge (optionally with chain of thought) and for a trained reward model.

  python -m cai_jax eval-hhh --config experiments/embedded.py --config.eval.limit=50

eval.reward_model: a reward-model directory (the `rm` stage's <workdir>/rm/model);
"" = none. Writes <workdir>/eval/hhh.json (+ per-item outcomes) and hhh.png.
"""

from __future__ import annotations

import json

from cai_jax import sharding
from cai_jax.data import preferences as prefs
from cai_jax.evals import hhh
from cai_jax.models.reward import load_reward_model
from cai_jax.sampling import TextSampler
from cai_jax.stages import common
from cai_jax.train.reward import score_pairs


def rm_score_fn(directory: str, mesh, loaded, max_len: int, batch_size: int):
  """(good convs, bad convs) -> r_good - r_bad under the reward model in `directory`
  (text through config.model's tokenizer and chat template)."""
  mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1})
  graphdef, params = load_reward_model(directory, mesh)

  def fn(good, bad):
    pairs = [prefs.Pair(str(i), g, b, 1.0, "hhh") for i, (g, b) in enumerate(zip(good, bad))]
    return score_pairs(graphdef, params, pairs, loaded.tokenizer, loaded.chat, max_len=max_len,
                       batch_size=batch_size, mesh=mesh)

  return fn


def missing_inputs(config) -> str | None:
  """Why this stage cannot run (the pipeline skips it, loudly), or None."""
  return common.missing_file(config.eval.hhh, "eval.hhh", "HHH comparisons (the paper's "
                            "438HHHEvaluations.jsonl, github.com/anthropics/ConstitutionalHarmlessnessPaper)")


def run(config) -> dict:
  e, layout = config.eval, common.layout(config)
  items = hhh.load_hhh(common.repo_path(e.hhh), e.limit)
  mesh = common.eval_mesh(config)
  loaded = common.load(config, mesh, rules="sample")
  common.say_start_model("eval-hhh (judge)", loaded.source, "config.model")
  sampler = TextSampler(loaded, common.judge_settings(config), mesh=mesh, seed=config.seed)
  logprob_fn = sampler.logprobs if e.judge else None
  reasoning = None
  if e.judge and e.cot:
    reasoning = lambda texts: sampler.complete(texts, step=1,  # noqa: E731
                                               max_new_tokens=e.cot_max_new_tokens)
  rm_fn = (rm_score_fn(e.reward_model, mesh, loaded, config.rm.max_len, e.batch_size)
           if e.reward_model else None)
  results = hhh.evaluate(items, logprob_fn=logprob_fn, generate_fn=reasoning,
                         cot_limit=e.cot_limit, rm_score_fn=rm_fn)
  out = layout.stage_dir("eval-hhh")
  out.mkdir(parents=True, exist_ok=True)
  summary = dict(model=loaded.source, reward_model=e.reward_model or None, n_items=len(items),
                 **{k: r.summary() for k, r in results.items()})
  layout.hhh.write_text(json.dumps(
      dict(summary, stage="eval-hhh",
           per_item={k: r.correct.astype(int).tolist() for k, r in results.items()}), indent=1))
  if results:
    hhh.plot(results, out / "hhh.png", f"HHH comparisons ({loaded.source})")
  return common.finish("eval-hhh", summary)
