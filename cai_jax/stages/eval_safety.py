"""Stage `eval-safety`: over-refusal rate (safe prompts refused) and unsafe-compliance rate
(unsafe prompts answered) for config.model and every further model in safety.models, on
the same prompts with the same sampler settings and seed (evals/safety.py).

  python -m cai_jax eval-safety --config experiments/tiny.py [--config.safety.data=FILE]
      [--config.safety.models=PATH1,PATH2] [--config.refusal.backend=judge]

Answers are classified by evals/refusal.py (refusal.backend: "rules", or "judge" with
config.model scoring the classes). Writes <workdir>/safety/answers_<i>_<model>.jsonl,
safety.json (per model rates and per type; each further model against the first with
McNemar's test) and frontier.png (ORR vs UCR, one point per model).

Resumable: answers are appended to a hidden .answers_<i>_<model>.partial.jsonl as they
come (its first line: the settings that made them), so a killed run continues where it
stopped, with the answers an unbroken run gives (each prompt's randomness comes from its
id). safety.json records each answer file's settings; a rerun reuses finished answers
when they match and refuses when they do not, naming what changed. One run at a time.
On several hosts each answers its share of the prompts (its own partial file) and host
0, once all are done, classifies every answer and writes the results.
"""

from __future__ import annotations

import json
import pathlib
import re

from tqdm import tqdm

from cai_jax.data import fingerprint
from cai_jax.data.jsonl import Host, ResumableRecords, iter_jsonl
from cai_jax.evals import refusal, safety
from cai_jax.sampling import TextSampler
from cai_jax.stages import common

STAGE = "eval-safety"


def short_name(source: str) -> str:
  """A file-name-safe short model name: the last path parts, e.g. "sft_hf" for runs/x/sft/hf."""
  parts = [p for p in re.split(r"[\\/]+", source) if p and p != "."][-2:]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts) or "model")[:60]


def answer_all(sampler: TextSampler, items: list[safety.SafetyPrompt], chunk: int,
               on_chunk=None) -> list[str]:
  """The model's chat answer to every prompt; row ids from the prompt ids, so a prompt draws
  the same randomness under every model (step=None: one key for the whole evaluation).
  `on_chunk(items, answers)` is called after each chunk (the stage appends them to disk)."""
  answers: list[str] = []
  with tqdm(total=len(items), unit="prompt", desc=f"answers ({sampler.source})") as bar:
    for start in range(0, len(items), chunk):
      part = items[start:start + chunk]
      got = sampler.chat([[{"role": "user", "content": it.prompt}] for it in part],
                         step=None, row_ids=[it.row_seed for it in part])
      if on_chunk is not None:
        on_chunk(part, got)
      answers += got
      bar.update(len(part))
  return answers


def classifier(backend: str, judge: TextSampler | None) -> safety.Classifier:
  """(prompts, answers) -> refusal classes through evals/refusal.py."""
  return lambda prompts, answers: refusal.classify(prompts, answers, backend=backend,
                                                  judge=judge if backend == "judge" else None)


def _recorded(out: pathlib.Path) -> dict:
  """answer file name -> its settings record, from a previous run's safety.json."""
  path = out / "safety.json"
  if not path.is_file():
    return {}
  try:
    return dict(json.loads(path.read_text()).get("answer_settings") or {})
  except (json.JSONDecodeError, AttributeError):
    return {}  # a torn summary from an older version: the answers are sampled again


class _Plan:
  """One model's answers: where they go, the settings that make them, what is done."""

  def __init__(self, config, out: pathlib.Path, i: int, source: str | None, settings,
               recorded: dict, host: Host = Host()):
    self.spec = common.model_spec(config, source)
    self.name = common.source_label(self.spec)
    self.path = out / f"answers_{i}_{short_name(self.name)}.jsonl"
    self.settings = common.answer_settings(config, self.spec, settings)
    what = f"the eval-safety answers of model {i} ({self.name}) in {self.path}"
    previous = recorded.get(self.path.name)
    if previous is not None:
      fingerprint.check_settings(previous, self.settings, what, out / "safety.json",
                                 f"use a new workdir, or delete {out} to evaluate again")
    self.log = ResumableRecords(out / f".{self.path.stem}.partial.jsonl", self.settings, what,
                                host)
    self.finished = {}
    if previous is not None and self.path.is_file():
      try:
        self.finished = {r["id"]: r for _, r in iter_jsonl(self.path)}
      except (ValueError, KeyError) as e:  # torn by a kill while it was rewritten
        common.log.warning("%s: %s; its answers are sampled again", STAGE, e)

  def cached(self, item: safety.SafetyPrompt) -> str | None:
    """The answer already on disk for `item`, or None; a changed prompt text is refused."""
    record = self.log.done.get(item.id) or self.finished.get(item.id)
    if record is None:
      return None
    if record.get("prompt") != item.prompt:
      raise ValueError(f"{item.where}: prompt {item.id!r} differs from the one answered in "
                       f"{self.path} (the prompt file changed); use a new workdir, or delete "
                       f"{self.path.parent} to evaluate again")
    return record["answer"]

  def all_answers(self, items: list[safety.SafetyPrompt]) -> list[str]:
    """Every host's answers (host 0, once all have answered), in item order."""
    records = self.log.merged([it.id for it in items], known=self.finished)
    for it, record in zip(items, records):
      self.log.done[it.id] = record
    return [self.cached(it) for it in items]

  def save(self, part: list[safety.SafetyPrompt], answers: list[str]) -> None:
    self.log.add([{"id": it.id, "prompt": it.prompt, "answer": a} for it, a in zip(part, answers)])


def run(config) -> dict:
  s, layout, host = config.safety, common.layout(config), common.host()
  path = common.repo_path(s.data) if s.data else safety.builtin_safety_path()
  items = safety.load_safety_prompts(path, s.limit)
  sources = [None] + [m.strip() for m in s.models.split(",") if m.strip()]
  settings = common.sampler_settings(config, max_new_tokens=s.max_new_tokens)
  backend = config.refusal.backend
  out = layout.stage_dir(STAGE)
  with common.generation_lock(out, host):
    # Every model's settings are checked before any model is loaded.
    recorded = _recorded(out)
    plans = [_Plan(config, out, i, source, settings, recorded, host)
             for i, source in enumerate(sources)]
    mesh = common.generation_mesh(config)
    judge, answers = None, []
    for i, plan in enumerate(plans):
      todo = [it for it in host.share(items) if plan.cached(it) is None]
      # The judge (config.model, model 0) classifies every answer on host 0.
      wants_judge = i == 0 and backend == "judge" and host.index == 0
      if todo or wants_judge:
        # Model 0 is config.model itself; the others replace only its source (common.model_spec).
        loaded = common.load(config, mesh, rules="sample", source=sources[i])
        common.say_start_model(f"{STAGE} (model {i})", loaded.source,
                               "config.model" if i == 0 else "safety.models")
        sampler = TextSampler(loaded, settings, mesh=mesh, seed=config.seed)
        common.log.info("%s: model %d: %d answers on disk, %d to sample (host %d of %d: %d "
                        "prompts)", STAGE, i, len(host.share(items)) - len(todo), len(todo),
                        host.index, host.count, len(host.share(items)))
        answer_all(sampler, todo, 4 * settings.batch_size, plan.save)
        if wants_judge:
          # config.model stays loaded as the judge, with room for the judge's long prompt.
          judge = TextSampler(loaded, common.judge_settings(config), mesh=mesh, seed=config.seed)
        del loaded, sampler  # free each model's params before the next loads
      common.barrier(f"{STAGE}: model {i} answered on every host")
      if host.index == 0:
        answers.append(plan.all_answers(items))
    if host.index != 0:  # host 0 classifies and writes the results
      return common.finish(STAGE, dict(hosts=host.count, host=host.index))
    summary = _write_results(config, items, plans, answers, classifier(backend, judge), out, path)
    for plan in plans:
      plan.log.remove()  # the finished answer files and safety.json now hold everything
  print(safety.table(summary.pop("_points")), flush=True)
  return common.finish(STAGE, summary)


def _write_results(config, items, plans, answers, classify, out: pathlib.Path, path) -> dict:
  """Classes, answer files, safety.json (with each answer file's settings) and the frontier."""
  backend, names = config.refusal.backend, [p.name for p in plans]
  classes, points, models = [], {}, []
  for i, (plan, ans) in enumerate(zip(plans, answers)):
    cls = safety.classify_answers(items, ans, classify)
    safety.write_answers(plan.path, items, ans, cls, plan.name)
    r = safety.rates(items, cls)
    points[f"{i}: {plan.name}"] = r
    classes.append(cls)
    models.append(dict(model=plan.name, answers=str(plan.path), **r.summary()))
  comparisons = [dict(a=names[0], b=names[i], **safety.compare(items, classes[0], classes[i]))
                 for i in range(1, len(names))]
  summary = dict(models=[{k: v for k, v in m.items() if k != "per_type"} for m in models],
                 comparisons=comparisons, backend=backend,
                 n_safe=sum(it.label == "safe" for it in items),
                 n_unsafe=sum(it.label == "unsafe" for it in items), data=str(path),
                 max_new_tokens=config.safety.max_new_tokens, frontier=str(out / "frontier.png"))
  recorded = {p.path.name: fingerprint.settings_record(p.settings, f"answers of {p.name}")
              for p in plans}
  fingerprint.write_atomically(out / "safety.json", json.dumps(  # per type only here: long
      dict(summary, stage=STAGE, models=models, answer_settings=recorded), indent=1))
  safety.plot_frontier(points, out / "frontier.png",
                       f"Safety vs over-refusal ({len(items)} prompts, {backend} classifier)")
  return dict(summary, _points=points)
