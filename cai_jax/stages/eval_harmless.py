"""Stage `eval-harmless`: the harmlessness score (evals/harmlessness.py) of a model's answers
to red-team prompts against a baseline's, rated by the human-trained evaluator.

  python -m cai_jax harmless-rm --config experiments/embedded.py      # the evaluator, once
  python -m cai_jax eval-harmless --config experiments/embedded.py --config.harmless.n_prompts=50

harmless.model: the evaluator (default <workdir>/harmless_rm/model); harmless.policy:
the scored model(s), comma-separated (default this workdir's SFT export, else
config.model); harmless.baseline: the comparison (default config.model). Both answer each prompt once with the same
sampler settings and seed. The evaluator reads text through config.model's tokenizer
and chat template (its trunk's). Writes <workdir>/harmless/harmless.json,
answers.jsonl (per-answer scores) and harmless.png.
"""

from __future__ import annotations

import json
import logging
import pathlib
import types

from cai_jax.data.prompts import load_prompts
from cai_jax.evals import harmlessness
from cai_jax.models.reward import load_reward_model
from cai_jax.sampling import TextSampler
from cai_jax.stages import common

STAGE = "eval-harmless"
log = logging.getLogger("cai_jax.stages")


def missing_inputs(config) -> str | None:
  """Why this stage cannot run (the pipeline skips it, loudly), or None."""
  path = pathlib.Path(config.harmless.model or common.layout(config).harmless_model)
  if path.is_dir():
    return None
  return (f"no harmlessness evaluator at {path} (stage harmless-rm trains it from "
          "harmless.data, the hh-rlhf pairs a user brings; or set --config.harmless.model=DIR)")


def evaluator_dir(config) -> pathlib.Path:
  """harmless.model, or this workdir's harmless_rm/model; FileNotFoundError when absent."""
  path = pathlib.Path(config.harmless.model or common.layout(config).harmless_model)
  if not path.is_dir():
    raise FileNotFoundError(f"harmless.model: no evaluator reward model at {path}; "
                            "run stage harmless-rm first (or set harmless.model)")
  return path


def load_evaluator(config, mesh=None, text_model=None) -> harmlessness.ScoreFn:
  """The evaluator as a ScoreFn (conversations -> rewards [N]), for this stage and others
  (sl-data scores each revision round with it: `harmlessness.score_answers(fn, prompts, answers)`).

  `text_model`: a loaded config.model whose tokenizer and chat template are reused (the
  evaluator's trunk was config.model); None loads config.model for them."""
  directory = evaluator_dir(config)
  if text_model is None:
    text_model = common.load(config, None, rules="sample")
  graphdef, params = load_reward_model(directory, mesh)
  c = config.harmless
  return harmlessness.reward_fn_from_model(graphdef, params, text_model.tokenizer, text_model.chat,
                                           max_len=c.max_len, batch_size=c.batch_size, mesh=mesh)


def _answers(config, source: str, mesh, messages) -> tuple[list[str], object]:
  """One answer per prompt from the model at `source` (the shared sampler settings and seed)."""
  loaded = common.load(config, mesh, rules="sample", source=source)
  sampler = TextSampler(loaded, common.sampler_settings(
      config, max_new_tokens=config.harmless.max_new_tokens), mesh=mesh, seed=config.seed)
  return sampler.chat(messages), loaded


def _evaluator_accuracy(config) -> float | None:
  """Held-out accuracy from the harmless-rm summary.json beside the evaluator, if there is one."""
  summary = evaluator_dir(config).parent / "summary.json"
  if not summary.is_file():
    return None
  return json.loads(summary.read_text()).get("heldout_accuracy")


def run(config) -> dict:
  c, layout = config.harmless, common.layout(config)
  evaluator = evaluator_dir(config)  # fail before any sampling
  prompts = load_prompts(common.repo_path(c.prompts), common.limit(c.n_prompts))
  if not prompts:
    raise ValueError(f"harmless.prompts: {c.prompts!r} gave no prompts")
  mesh = common.eval_mesh(config)
  if c.policy:
    policies = [s.strip() for s in c.policy.split(",") if s.strip()]
    common.say_start_model(f"{STAGE} (scored models)", ", ".join(policies), "set in the config")
  else:
    policy, why = layout.start_model("", config.model.source)
    common.say_start_model(f"{STAGE} (scored model)", policy, why)
    policies = [policy]
  baseline = c.baseline or config.model.source
  common.say_start_model(f"{STAGE} (baseline)", baseline,
                         "set in the config" if c.baseline else "config.model")
  messages = [[{"role": "user", "content": p.text}] for p in prompts]
  # One model on the device at a time; a model that is the baseline reuses its samples.
  base_answers, base_loaded = _answers(config, baseline, mesh, messages)
  text_model = (types.SimpleNamespace(tokenizer=base_loaded.tokenizer, chat=base_loaded.chat)
                if baseline == config.model.source else None)
  base_loaded = None
  answers = {}
  for policy in policies:
    if policy == baseline:
      log.info("%s: %s is the baseline; its answers are the same samples", STAGE, policy)
      answers[policy] = base_answers
    else:
      answers[policy], _ = _answers(config, policy, mesh, messages)
  score_fn = load_evaluator(config, mesh, text_model)
  texts = [p.text for p in prompts]
  results = [(policy, harmlessness.harmlessness_score(score_fn, texts, answers[policy], base_answers))
             for policy in policies]

  out = layout.stage_dir(STAGE)
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "answers.jsonl", "w") as f:
    for policy, result in results:
      for i, p in enumerate(prompts):
        f.write(json.dumps(dict(model=policy, id=p.id, category=p.category, prompt=p.text,
                                answer=answers[policy][i], score=result.scores[i],
                                baseline_answer=base_answers[i],
                                baseline_score=result.baseline_scores[i])) + "\n")
  summary = dict(baseline=baseline, evaluator=str(evaluator),
                 evaluator_heldout_accuracy=_evaluator_accuracy(config), prompts=c.prompts,
                 n=len(prompts), models=[dict(model=policy, **r.summary()) for policy, r in results])
  last, last_result = results[-1]  # the pipeline lists the final (most trained) model last
  harmlessness.plot(last_result, out / "harmless.png", ("model", "baseline"),
                    f"harmlessness: {last} vs {baseline}")
  for row in summary["models"]:
    log.info("%s: %s: mean %.3f vs baseline %.3f, win rate %.2f %s", STAGE, row["model"],
             row["mean_score"], row["baseline_mean_score"], row["win_rate"], row["win_rate_ci95"])
  return common.finish(STAGE, summary, out / "harmless.json")
