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

Output: JSONL, one record per prompt in prompt order. Records are appended and
fsync'ed per batch to a per-host shard beside it (data/jsonl.py ResumableRecords);
host 0 merges the shards when every host is done. A rerun resumes: complete
records are kept, a truncated last line (a kill mid-write) is cut off with a
warning, and only the missing prompts are generated. Each prompt's randomness
derives from (seed, prompt id), so the order, grouping and host of the work do
not change what a prompt gets: N hosts, or a killed and resumed run, write
exactly what one unbroken run writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from cai_jax import paths
from cai_jax.constitution import Constitution, FewShotExample, Principle
from cai_jax.data.jsonl import Host, ResumableRecords, read_appended
from cai_jax.data.prompts import Prompt
from cai_jax.sampling import TextSampler

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


def read_finished(path, expected_fingerprint: str) -> dict[str, dict]:
  """id -> record of an sl-data output already at `path` (a finished run's, or an older
  version's append-only file, whose torn last line is cut off); ValueError naming
  file:line for a record made under another fingerprint, or one that is not a record."""
  records = read_appended(path)
  done: dict[str, dict] = {}
  for line_no, record in enumerate(records, start=1):
    rid, fp = record.get("id"), record.get("config_fingerprint")
    if not isinstance(rid, str) or not isinstance(fp, str):
      raise ValueError(f"{path}:{line_no}: not a complete sl-data record; fix or remove the file")
    if fp != expected_fingerprint:
      raise ValueError(f"{path}:{line_no}: written with config fingerprint {fp}, but this run's is "
                       f"{expected_fingerprint}; choose another sl_data.out or delete the file")
    if rid in done:
      raise ValueError(f"{path}:{line_no}: record id {rid!r} appears twice")
    done[rid] = record
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
                     fp: str, host: Host = Host(),
                     sync: Callable[[str], None] = lambda name: None) -> dict:
  """Writes (or completes) the SL-CAI JSONL at out_path (local or gs://); returns a summary.

  This host generates its share of the prompts (`host.share`: prompt i on host i % count)
  in batches of the sampler's batch_size, appending each batch to its shard (a hidden
  .<name>.partial*.jsonl beside out_path); once every host is done (`sync`, a barrier),
  host 0 writes out_path with every record in prompt order and deletes the shards.
  """
  if settings.mode not in MODES:
    raise ValueError(f"sl_data.mode: {settings.mode!r}; expected one of {MODES}")
  out_path = paths.as_path(out_path)
  items = [("red_team", p) for p in red_team] + [("helpful", p) for p in helpful]
  ids = [p.id for _, p in items]
  if len(set(ids)) != len(ids):
    raise ValueError(f"sl-data: prompt id {next(i for i in ids if ids.count(i) > 1)!r} is used twice "
                     "(red-team and helpful sets must not share ids)")
  finished = read_finished(out_path, fp)
  shards = ResumableRecords(out_path.with_name(f".{out_path.stem}.partial.jsonl"),
                            {"config_fingerprint": fp}, f"the sl-data records in {out_path}", host)
  todo = [it for it in host.share(items) if it[1].id not in finished and it[1].id not in shards.done]
  log.info("sl-data: %d prompts (host %d of %d), %d already in %s, %d to generate here (%s mode, "
           "%d rounds)", len(items), host.index, host.count, len(finished) + len(shards.done),
           out_path, len(todo), settings.mode, settings.n_rounds)
  sample = _chat_fn(sampler)
  batch_size = sampler.settings.batch_size
  t0 = time.perf_counter()
  with tqdm(total=len(todo), unit="prompt", desc="sl-data") as bar:
    for start in range(0, len(todo), batch_size):
      batch = todo[start:start + batch_size]
      records = critique_and_revise(sample, constitution, batch, settings, sampler.source, fp)
      shards.add([json.loads(r.to_json()) for r in records])  # appended and fsynced
      bar.update(len(batch))
  seconds = time.perf_counter() - t0
  shards.finish(out_path, ids, finished, sync)
  summary = {"out": str(out_path), "written": len(todo), "total": len(items), "seconds": seconds,
             "prompts_per_s": len(todo) / seconds if todo else 0.0, "hosts": host.count}
  log.info("sl-data: wrote %d records in %.1fs (%.2f prompts/s)", len(todo), seconds,
           summary["prompts_per_s"])
  return summary
