"""SL-CAI's core: initial answers, then rounds of critique -> revision (stage `sl-data`).

For every red-team prompt (paper §3.1):
  1. the policy answers the prompt;
  2. n rounds: a principle is drawn at random (independently per round;
     uniformly, or by tier weight: Constitution.sample); the model critiques
     its current answer under it, then revises it ("direct" mode skips the
     critique: revision request right after the answer);
  3. the record keeps every round's principle (with its tier, layer and file),
     critique and revision.
Helpfulness prompts get one answer and no rounds (paper: helpful samples are
mixed into the SFT set).

Conversations use the model's chat template: the few-shot examples come first
as earlier turns, then [user: prompt, assistant: current answer, user:
critique request, assistant: critique, user: revision request]. Unlike the
paper, which keeps appending rounds to one growing transcript, each round here
starts from the latest revision alone (a bounded context for small models).

Output: JSONL, one record per prompt, appended and fsync'ed per batch. A rerun
resumes: complete records are kept, a truncated last line (a kill mid-write) is
cut off with a warning, and only the missing prompts are generated. Each
prompt's randomness derives from (seed, prompt id), so the order and grouping
of the work does not change what a prompt gets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
import zlib
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from cai_jax.sampling import TextSampler
from cai_jax.constitution import Constitution, FewShotExample, Principle
from cai_jax.data.prompts import Prompt

log = logging.getLogger(__name__)
MODES = ("critique", "direct")


@dataclasses.dataclass(frozen=True)
class SLDataSettings:
  """How to revise: rounds, mode, few-shot count and the seed of the principle draws.
  (How to sample is the TextSampler's SamplerSettings.)"""

  n_rounds: int = 4
  mode: str = "critique"  # critique | direct
  n_few_shot: int = 5  # how many of the constitution's examples go in the prefix
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Round:
  principle: str
  critique: str | None  # None in direct mode
  revision: str
  tier: str = ""  # the principle's tier and provenance (the layer and file that defined it)
  layer: str = ""
  source: str = ""


@dataclasses.dataclass(frozen=True)
class SLRecord:
  """One line of sl_cai.jsonl."""

  id: str
  prompt: str
  initial: str
  rounds: tuple[Round, ...]
  kind: str  # red_team | helpful
  model: str
  config_fingerprint: str

  def to_json(self) -> str:
    d = dataclasses.asdict(self)
    d["rounds"] = [dataclasses.asdict(r) for r in self.rounds]
    return json.dumps(d, ensure_ascii=False)


def fingerprint(obj) -> str:
  """A short stable hash of a JSON-able description of the run's settings."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- conversations


def few_shot_messages(examples: Sequence[FewShotExample], mode: str) -> list[dict]:
  """The few-shot examples as chat turns (critique turns left out in direct mode)."""
  msgs: list[dict] = []
  for ex in examples:
    msgs += [{"role": r, "content": t} for r, t in ex.messages]
    if mode == "critique":
      msgs += [{"role": "user", "content": ex.critique_request},
               {"role": "assistant", "content": ex.critique}]
    msgs += [{"role": "user", "content": ex.revision_request},
             {"role": "assistant", "content": ex.revision}]
  return msgs


def critique_messages(prefix, prompt: str, answer: str, principle: Principle) -> list[dict]:
  return prefix + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer},
                   {"role": "user", "content": principle.critique}]


def revision_messages(prefix, prompt: str, answer: str, principle: Principle,
                      critique: str | None) -> list[dict]:
  msgs = prefix + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
  if critique is not None:
    msgs += [{"role": "user", "content": principle.critique},
             {"role": "assistant", "content": critique}]
  return msgs + [{"role": "user", "content": principle.revision}]


# ----------------------------------------------------------------------------- resume


def read_done_ids(path: pathlib.Path, expected_fingerprint: str) -> set[str]:
  """Ids of complete records in `path`; cuts a truncated last line off the file."""
  if not path.exists():
    return set()
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a truncated last record (%d bytes) left by an interrupted run",
                path, len(data) - keep)
    with open(path, "r+b") as f:
      f.truncate(keep)
    data = data[:keep]
  done: set[str] = set()
  for line_no, line in enumerate(data.decode("utf-8").splitlines(), start=1):
    try:
      record = json.loads(line)
      rid, fp = record["id"], record["config_fingerprint"]
    except (json.JSONDecodeError, KeyError, TypeError):
      raise ValueError(f"{path}:{line_no}: not a complete sl-data record; fix or remove the file") from None
    if fp != expected_fingerprint:
      raise ValueError(f"{path}:{line_no}: written with config fingerprint {fp}, but this run's is "
                       f"{expected_fingerprint}; choose another sl_data.out or delete the file")
    if rid in done:
      raise ValueError(f"{path}:{line_no}: record id {rid!r} appears twice")
    done.add(rid)
  return done


# ----------------------------------------------------------------------------- generation


def _row_id(record_id: str) -> int:
  return zlib.crc32(record_id.encode()) & 0x7FFFFFFF


def _chat_fn(sampler: TextSampler):
  """(conversations, row_ids, phase) -> answers, through the text-level sampler."""
  return lambda convs, row_ids, phase: sampler.chat(convs, row_ids=row_ids, step=phase)


def critique_and_revise(sample, constitution: Constitution, items: Sequence[tuple[str, Prompt]],
                        settings: SLDataSettings, model_name: str, fp: str) -> list[SLRecord]:
  """Runs one batch of (kind, prompt) items through answer + rounds; returns their records."""
  ids = [p.id for _, p in items]
  row_ids = [_row_id(i) for i in ids]
  initial = sample([[{"role": "user", "content": p.text}] for _, p in items], row_ids, phase=0)
  prefix = few_shot_messages(constitution.few_shot[:max(settings.n_few_shot, 0)], settings.mode)
  red = [j for j, (kind, _) in enumerate(items) if kind == "red_team"]
  chosen = {j: constitution.sample(np.random.default_rng([settings.seed, row_ids[j]]),
                                   settings.n_rounds) for j in red}
  current = list(initial)
  rounds: dict[int, list[Round]] = {j: [] for j in range(len(items))}
  for r in range(settings.n_rounds if red else 0):
    principles = {j: chosen[j][r] for j in red}
    critiques = {j: None for j in red}
    if settings.mode == "critique":
      texts = sample([critique_messages(prefix, items[j][1].text, current[j], principles[j]) for j in red],
                     [row_ids[j] for j in red], phase=1 + 2 * r)
      critiques = dict(zip(red, texts))
    texts = sample([revision_messages(prefix, items[j][1].text, current[j], principles[j], critiques[j])
                    for j in red], [row_ids[j] for j in red], phase=2 + 2 * r)
    for j, text in zip(red, texts):
      p = principles[j]
      rounds[j].append(Round(principle=p.id, critique=critiques[j], revision=text, tier=p.tier,
                             layer=p.layer, source=p.source))
      current[j] = text
  return [SLRecord(id=p.id, prompt=p.text, initial=initial[j], rounds=tuple(rounds[j]), kind=kind,
                   model=model_name, config_fingerprint=fp) for j, (kind, p) in enumerate(items)]


def generate_sl_data(sampler: TextSampler, constitution: Constitution, red_team: Sequence[Prompt],
                     helpful: Sequence[Prompt], out_path, settings: SLDataSettings, *,
                     fp: str) -> dict:
  """Writes (or completes) the SL-CAI JSONL at out_path; returns a summary dict.

  Prompts go through `sampler` in batches of its settings' batch_size.
  """
  if settings.mode not in MODES:
    raise ValueError(f"sl_data.mode: {settings.mode!r}; expected one of {MODES}")
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  items = [("red_team", p) for p in red_team] + [("helpful", p) for p in helpful]
  ids = [p.id for _, p in items]
  if len(set(ids)) != len(ids):
    raise ValueError(f"sl-data: prompt id {next(i for i in ids if ids.count(i) > 1)!r} is used twice "
                     "(red-team and helpful sets must not share ids)")
  done = read_done_ids(out_path, fp)
  todo = [it for it in items if it[1].id not in done]
  log.info("sl-data: %d prompts, %d already in %s, %d to generate (%s mode, %d rounds)",
           len(items), len(items) - len(todo), out_path, len(todo), settings.mode, settings.n_rounds)
  sample = _chat_fn(sampler)
  batch_size = sampler.settings.batch_size
  t0 = time.perf_counter()
  with open(out_path, "a", encoding="utf-8") as f, tqdm(total=len(todo), unit="prompt",
                                                         desc="sl-data") as bar:
    for start in range(0, len(todo), batch_size):
      batch = todo[start:start + batch_size]
      records = critique_and_revise(sample, constitution, batch, settings, sampler.source, fp)
      f.write("".join(r.to_json() + "\n" for r in records))
      f.flush()
      os.fsync(f.fileno())
      bar.update(len(batch))
  seconds = time.perf_counter() - t0
  summary = {"out": str(out_path), "written": len(todo), "total": len(items), "seconds": seconds,
             "prompts_per_s": len(todo) / seconds if todo else 0.0}
  log.info("sl-data: wrote %d records in %.1fs (%.2f prompts/s)", len(todo), seconds,
           summary["prompts_per_s"])
  return summary
