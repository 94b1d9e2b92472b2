"""Stage `eval-harmless`: the harmlessness score (evals/harmlessness.py) of a model's answers
to red-team prompts against a baseline's, rated by the human-trained evaluator.

  python -m cai_jax harmless-rm --config experiments/embedded.py      # the evaluator, once
  python -m cai_jax eval-harmless --config experiments/embedded.py --config.harmless.n_prompts=50

harmless.model: the evaluator (default <workdir>/harmless_rm/model); harmless.policy:
the scored model(s), comma-separated (default this workdir's SFT export, else
config.model); harmless.baseline: the comparison (default config.model). Both answer each prompt once with the same
sampler settings and seed. The evaluator reads text through config.model's tokenizer
and chat template (its trunk's). Writes <workdir>/harmless/harmless.json,
answers.jsonl (per-answer scores) and harmless.png. Resumable (answers are kept as they
come, seeded by prompt ids); one run at a time. On several hosts each answers its share
of the prompts and host 0 scores them all.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import types
import zlib

from tqdm import tqdm

from cai_jax import paths
from cai_jax.data import fingerprint
from cai_jax.data.jsonl import Host, ResumableRecords, iter_jsonl
from cai_jax.data.prompts import load_prompts
from cai_jax.evals import harmlessness
from cai_jax.models.reward import load_reward_model
from cai_jax.sampling import TextSampler
from cai_jax.stages import common

STAGE = "eval-harmless"
log = logging.getLogger("cai_jax.stages")


def missing_inputs(config) -> str | None:
  """Why this stage cannot run (the pipeline skips it, loudly), or None."""
  path = paths.as_path(config.harmless.model or common.layout(config).harmless_model)
  if path.is_dir():
    return None
  return (f"no harmlessness evaluator at {path} (stage harmless-rm trains it from "
          "harmless.data, the hh-rlhf pairs a user brings; or set --config.harmless.model=DIR)")


def evaluator_dir(config) -> pathlib.Path:
  """harmless.model, or this workdir's harmless_rm/model; FileNotFoundError when absent."""
  path = paths.as_path(config.harmless.model or common.layout(config).harmless_model)
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
  out, host = layout.stage_dir(STAGE), common.host()
  with common.generation_lock(out, host):
    stores = _answer_stores(config, out, list(dict.fromkeys([baseline] + policies)), host)
    mesh = common.generation_mesh(config)
    # One model on the device at a time; a model that is the baseline reuses its samples.
    answers, text_model = {}, None
    for source, store in stores.items():
      if source in policies and source == baseline:
        log.info("%s: %s is the baseline; its answers are the same samples", STAGE, source)
      answers[source], loaded = store.answer_all(config, prompts, mesh)
      if loaded is not None and source == config.model.source:
        text_model = types.SimpleNamespace(tokenizer=loaded.tokenizer, chat=loaded.chat)
      loaded = None
    if host.index != 0:  # host 0 scores every answer and writes the results
      return common.finish(STAGE, dict(hosts=host.count, host=host.index))
    base_answers = answers[baseline]
    score_fn = load_evaluator(config, mesh, text_model)
    texts = [p.text for p in prompts]
    results = [(policy, harmlessness.harmlessness_score(score_fn, texts, answers[policy],
                                                        base_answers)) for policy in policies]
    rows = [dict(model=policy, id=p.id, category=p.category, prompt=p.text,
                 answer=answers[policy][i], score=result.scores[i],
                 baseline_answer=base_answers[i], baseline_score=result.baseline_scores[i])
            for policy, result in results for i, p in enumerate(prompts)]
    fingerprint.write_atomically(out / "answers.jsonl",
                                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_recorded(out, stores)
    summary = dict(baseline=baseline, evaluator=str(evaluator),
                   evaluator_heldout_accuracy=_evaluator_accuracy(config), prompts=c.prompts,
                   n=len(prompts), models=[dict(model=policy, **r.summary()) for policy, r in results])
    last, last_result = results[-1]  # the pipeline lists the final (most trained) model last
    harmlessness.plot(last_result, out / "harmless.png", ("model", "baseline"),
                      f"harmlessness: {last} vs {baseline}")
    for store in stores.values():
      store.log.remove()  # answers.jsonl and its settings file now hold everything
  for row in summary["models"]:
    log.info("%s: %s: mean %.3f vs baseline %.3f, win rate %.2f %s", STAGE, row["model"],
             row["mean_score"], row["baseline_mean_score"], row["win_rate"], row["win_rate_ci95"])
  return common.finish(STAGE, summary, out / "harmless.json")


# ----------------------------------------------------------------------------- resumable answers

SETTINGS_FILE = "answers.settings.json"  # each answering model's settings, beside answers.jsonl


class _AnswerStore:
  """One model's answers to the prompts: those on disk (a finished answers.jsonl made with
  the same settings, or a killed run's partial file) and the rest, sampled and appended."""

  def __init__(self, config, out: pathlib.Path, source: str, recorded: dict, finished: dict,
               host: Host = Host()):
    self.source, self.host = source, host
    self.settings = common.answer_settings(config, common.model_spec(config, source),
                                           common.sampler_settings(
                                               config, max_new_tokens=config.harmless.max_new_tokens))
    what = f"the eval-harmless answers of {source} in {out / 'answers.jsonl'}"
    if source in recorded:
      fingerprint.check_settings(recorded[source], self.settings, what, out / SETTINGS_FILE,
                                 f"use a new workdir, or delete {out} to evaluate again")
    self.finished = finished if source in recorded else {}
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(pathlib.Path(source).parts[-2:]))[:60]
    self.log = ResumableRecords(out / f".answers_{name}.partial.jsonl", self.settings, what, host)

  def _cached(self, prompt) -> str | None:
    record = self.log.done.get(prompt.id) or self.finished.get(prompt.id)
    if record is None:
      return None
    if record["prompt"] != prompt.text:
      raise ValueError(f"harmless.prompts: prompt {prompt.id!r} differs from the one answered "
                       f"before in {self.log.path.parent} (the prompt set changed); use a new "
                       f"workdir, or delete {self.log.path.parent} to evaluate again")
    return record["answer"]

  def answer_all(self, config, prompts, mesh):
    """(an answer per prompt, the loaded model or None when every answer was on disk). This
    host samples its share of the prompts; once every host has, host 0 gets all answers
    (the other hosts: None)."""
    have = {p.id: self._cached(p) for p in self.host.share(prompts)}
    todo = [p for p in self.host.share(prompts) if have[p.id] is None]
    loaded = None
    if todo:
      loaded = common.load(config, mesh, rules="sample", source=self.source)
      settings = common.sampler_settings(config, max_new_tokens=config.harmless.max_new_tokens)
      sampler = TextSampler(loaded, settings, mesh=mesh, seed=config.seed)
      log.info("%s: %s: %d answers on disk, %d to sample (host %d of %d)", STAGE, self.source,
               len(have) - len(todo), len(todo), self.host.index, self.host.count)
      chunk = 4 * settings.batch_size
      with tqdm(total=len(todo), unit="prompt", desc=f"answers ({self.source})") as bar:
        for start in range(0, len(todo), chunk):
          part = todo[start:start + chunk]
          # Rows seeded by the prompt id: the same sample whatever the chunking or resume point.
          got = sampler.chat([[{"role": "user", "content": p.text}] for p in part],
                             row_ids=[zlib.crc32(p.id.encode()) for p in part])
          self.log.add([{"id": p.id, "prompt": p.text, "answer": a} for p, a in zip(part, got)])
          bar.update(len(part))
    common.barrier(f"{STAGE}: {self.source} answered on every host")
    if self.host.index != 0:
      return None, loaded
    for record in self.log.merged([p.id for p in prompts], known=self.finished):
      self.log.done.setdefault(record["id"], record)
    return [self._cached(p) for p in prompts], loaded


def _answer_stores(config, out: pathlib.Path, sources: list[str],
                   host: Host = Host()) -> dict[str, _AnswerStore]:
  """A store per answering model; every model's settings are checked before any loads."""
  recorded, finished = {}, {}
  if (out / SETTINGS_FILE).is_file():
    stored = fingerprint.read_settings_file(out / SETTINGS_FILE)
    recorded = stored.get("models", {})
    try:
      for _, r in iter_jsonl(out / "answers.jsonl"):
        finished.setdefault(r["model"], {})[r["id"]] = r
        finished.setdefault(stored["baseline"], {})[r["id"]] = dict(r, answer=r["baseline_answer"])
    except (ValueError, KeyError) as e:  # absent, or torn by a kill while it was rewritten
      log.info("%s: no finished answers to reuse (%s)", STAGE, e)
      finished = {}
  return {s: _AnswerStore(config, out, s, recorded, finished.get(s, {}), host) for s in sources}


def _write_recorded(out: pathlib.Path, stores: dict[str, _AnswerStore]) -> None:
  """answers.settings.json: the baseline (the first store) and every model's settings."""
  models = {s: fingerprint.settings_record(st.settings, f"answers of {s}") for s, st in stores.items()}
  record = dict(what="the settings of each model whose answers are in answers.jsonl",
                baseline=next(iter(stores)), models=models)
  record["fingerprint"] = fingerprint.settings_fingerprint(models)
  fingerprint.write_atomically(out / SETTINGS_FILE, json.dumps(record, indent=1, sort_keys=True))
