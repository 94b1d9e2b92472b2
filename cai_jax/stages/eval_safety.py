"""Stage `eval-safety`: over-refusal rate (safe prompts refused) and unsafe-compliance rate
(unsafe prompts answered) for config.model and every further model in safety.models, on
the same prompts with the same sampler settings and seed (evals/safety.py).

  python -m cai_jax eval-safety --config experiments/tiny.py [--config.safety.data=FILE]
      [--config.safety.models=PATH1,PATH2] [--config.refusal.backend=judge]

Answers are classified by evals/refusal.py (refusal.backend: "rules", or "judge" with
config.model scoring the classes). Writes <workdir>/safety/answers_<i>_<model>.jsonl,
safety.json (per model rates and per type; each further model against the first with
McNemar's test) and frontier.png (ORR vs UCR, one point per model).
"""

from __future__ import annotations

import json
import re

from tqdm import tqdm

from cai_jax.evals import refusal, safety
from cai_jax.sampling import TextSampler
from cai_jax.stages import common

def short_name(source: str) -> str:
  """A file-name-safe short model name: the last path parts, e.g. "sft_hf" for runs/x/sft/hf."""
  parts = [p for p in re.split(r"[\\/]+", source) if p and p != "."][-2:]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts) or "model")[:60]


def answer_all(sampler: TextSampler, items: list[safety.SafetyPrompt], chunk: int) -> list[str]:
  """The model's chat answer to every prompt; row ids from the prompt ids, so a prompt draws
  the same randomness under every model (step=None: one key for the whole evaluation)."""
  answers: list[str] = []
  with tqdm(total=len(items), unit="prompt", desc=f"answers ({sampler.source})") as bar:
    for start in range(0, len(items), chunk):
      part = items[start:start + chunk]
      answers += sampler.chat([[{"role": "user", "content": it.prompt}] for it in part],
                              step=None, row_ids=[it.row_seed for it in part])
      bar.update(len(part))
  return answers


def classifier(backend: str, judge: TextSampler | None) -> safety.Classifier:
  """(prompts, answers) -> refusal classes through evals/refusal.py."""
  return lambda prompts, answers: refusal.classify(prompts, answers, backend=backend,
                                                  judge=judge if backend == "judge" else None)


def run(config) -> dict:
  s, layout = config.safety, common.layout(config)
  path = common.repo_path(s.data) if s.data else safety.builtin_safety_path()
  items = safety.load_safety_prompts(path, s.limit)
  sources = [config.model.source] + [m.strip() for m in s.models.split(",") if m.strip()]
  mesh = common.eval_mesh(config)
  settings = common.sampler_settings(config, max_new_tokens=s.max_new_tokens)
  backend = config.refusal.backend
  judge = None
  answers, names = [], []
  for i, source in enumerate(sources):
    # Model 0 is config.model itself; the others replace only its source (common.model_spec).
    loaded = common.load(config, mesh, rules="sample", source=source if i else None)
    common.say_start_model(f"eval-safety (model {i})", loaded.source,
                           "config.model" if i == 0 else "safety.models")
    sampler = TextSampler(loaded, settings, mesh=mesh, seed=config.seed)
    answers.append(answer_all(sampler, items, 4 * settings.batch_size))
    names.append(loaded.source)
    if i == 0 and backend == "judge":
      # config.model stays loaded as the judge, with room for the judge's long prompt.
      judge = TextSampler(loaded, common.judge_settings(config), mesh=mesh, seed=config.seed)
    del loaded, sampler  # free each model's params before the next loads

  classify = classifier(backend, judge)
  out = layout.stage_dir("eval-safety")
  out.mkdir(parents=True, exist_ok=True)
  classes, points, models = [], {}, []
  for i, (name, ans) in enumerate(zip(names, answers)):
    cls = safety.classify_answers(items, ans, classify)
    answers_path = out / f"answers_{i}_{short_name(name)}.jsonl"
    safety.write_answers(answers_path, items, ans, cls, name)
    r = safety.rates(items, cls)
    points[f"{i}: {name}"] = r
    classes.append(cls)
    models.append(dict(model=name, answers=str(answers_path), **r.summary()))

  comparisons = [dict(a=names[0], b=names[i], **safety.compare(items, classes[0], classes[i]))
                 for i in range(1, len(names))]
  summary = dict(models=[{k: v for k, v in m.items() if k != "per_type"} for m in models],
                 comparisons=comparisons, backend=backend,
                 n_safe=sum(it.label == "safe" for it in items),
                 n_unsafe=sum(it.label == "unsafe" for it in items), data=str(path),
                 max_new_tokens=s.max_new_tokens, frontier=str(out / "frontier.png"))
  (out / "safety.json").write_text(json.dumps(
      dict(summary, stage="eval-safety", models=models), indent=1))  # per type only here: long
  safety.plot_frontier(points, out / "frontier.png",
                       f"Safety vs over-refusal ({len(items)} prompts, {backend} classifier)")
  print(safety.table(points), flush=True)
  return common.finish("eval-safety", summary)
