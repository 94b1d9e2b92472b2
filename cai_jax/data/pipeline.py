"""SFT data: SL-CAI JSONL -> chat-formatted, tokenized, mixed, packed batches.

  read_sl_cai(paths)          records -> Examples (every selected revision round
                              of a red-team record; the answer of a helpful one)
  tokenize_examples(...)      prompt ids (masked) + response ids (trained), the
                              response closed by the template's end-of-turn
  SFTBatches(...)             an endless, deterministic iterator of packed
                              [B, T] batches with get_state()/set_state()

Each epoch draws the two sources (revisions, helpful) in the configured ratio
(the scarcer one is cycled), shuffles them by (seed, epoch) with grain, packs
them greedily in that order into rows of seq_len (segment_ids 1, 2, ... per
row, 0 = padding; positions restart at 0 in every segment) and cuts the row
stream into global batches; process p of n takes rows [p*B/n, (p+1)*B/n) of
each. The iterator state is just the index of the next batch, so it resumes
exactly. Bad input (empty file, malformed JSON, missing field, an example
longer than seq_len) raises a DataError naming file:line, or with
on_error="skip" is counted in the DataReport and logged - never dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import pathlib
import zlib
from collections.abc import Sequence

import grain
import jax
import numpy as np

from cai_jax.data.jsonl import iter_jsonl
from cai_jax.tokenizer import ChatTemplate, Tokenizer

log = logging.getLogger(__name__)


class DataError(ValueError):
  """Input data that cannot be used, with the file:line and what was expected."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One (prompt, response) training pair and where it came from."""

  prompt: str
  response: str
  kind: str  # "revision" | "helpful"
  where: str  # "file:line" (+ " round r")
  record_id: str = ""


@dataclasses.dataclass
class DataReport:
  """What was read and what was skipped (reason -> count, first places)."""

  n_records: int = 0
  n_examples: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_where: list[str] = dataclasses.field(default_factory=list)

  def skip(self, reason: str, message: str) -> None:
    self.skipped[reason] += 1
    if len(self.skipped_where) < 20:
      self.skipped_where.append(message)
    log.warning("skipping: %s", message)

  def summary(self) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.n_examples.items()))
    return f"{self.n_records} records -> examples ({kinds}); skipped ({skipped})"


def _fail_or_skip(on_error: str, report: DataReport, reason: str, message: str) -> None:
  if on_error == "raise":
    raise DataError(message + " (set sft.on_error='skip' to count and skip such items)")
  report.skip(reason, message)


def _selected_rounds(n: int, rounds: str) -> list[int]:
  if rounds == "all":
    return list(range(n))
  if rounds == "last":
    return [n - 1] if n else []
  return [int(r) - 1 for r in rounds.split(",") if 0 < int(r) <= n]  # 1-based round numbers


def read_sl_cai(paths: Sequence[str | pathlib.Path], *, rounds: str = "all", on_error: str = "raise",
                report: DataReport | None = None) -> list[Example]:
  """Examples from SL-CAI JSONL files (one record per line: cai/revision.py's SLRecord).

  red_team records give one example per selected round: (prompt, that round's
  revision). helpful records give (prompt, initial). rounds: "all" | "last" |
  "1,3" (1-based). Blank lines are not records and are passed over.
  """
  report = report if report is not None else DataReport()
  out: list[Example] = []
  for path in map(pathlib.Path, paths):
    if not path.is_file():
      raise DataError(f"{path}: no such file (sft.data)")
    lines = 0

    def bad_line(reason: str, message: str) -> None:
      nonlocal lines
      lines += 1
      _fail_or_skip(on_error, report, reason, message)

    for where, rec in iter_jsonl(path, DataError, on_bad_line=bad_line):
      lines += 1
      got = _examples_of(rec, where, rounds)
      if isinstance(got, str):
        _fail_or_skip(on_error, report, "missing_field", f"{where}: {got}")
        continue
      report.n_records += 1
      for ex in got:
        report.n_examples[ex.kind] += 1
      out.extend(got)
    if not lines:
      _fail_or_skip(on_error, report, "empty_file", f"{path}: empty file, expected SL-CAI JSONL records")
  return out


def _examples_of(rec, where: str, rounds: str) -> list[Example] | str:
  """The record's examples, or a description of what is wrong with it."""
  for field in ("id", "prompt", "kind"):
    if not isinstance(rec.get(field), str) or not rec[field]:
      return f"missing or empty string field {field!r}"
  if rec["kind"] == "helpful":
    if not isinstance(rec.get("initial"), str) or not rec["initial"].strip():
      return "helpful record: missing or empty field 'initial'"
    return [Example(rec["prompt"], rec["initial"], "helpful", where, rec["id"])]
  if rec["kind"] != "red_team":
    return f"field 'kind' is {rec['kind']!r}; expected 'red_team' or 'helpful'"
  rs = rec.get("rounds")
  if not isinstance(rs, list) or not rs:
    return "red_team record: field 'rounds' must be a non-empty list"
  out = []
  for r in _selected_rounds(len(rs), rounds):
    rev = rs[r].get("revision") if isinstance(rs[r], dict) else None
    if not isinstance(rev, str) or not rev.strip():
      return f"rounds[{r}]: missing or empty field 'revision'"
    out.append(Example(rec["prompt"], rev, "revision", f"{where} round {r + 1}", rec["id"]))
  return out


@dataclasses.dataclass(frozen=True)
class Tokenized:
  """Token ids of one example and how many of them are the (masked) prompt."""

  ids: np.ndarray  # [L] int32
  n_prompt: int
  kind: str


def tokenize_examples(examples: Sequence[Example], tokenizer: Tokenizer, chat: ChatTemplate,
                      seq_len: int, *, on_error: str = "raise",
                      report: DataReport | None = None) -> list[Tokenized]:
  """Chat-formats and tokenizes; an example longer than seq_len is an error or a counted skip."""
  report = report if report is not None else DataReport()
  eot = chat.end_of_turn()
  out = []
  for ex in examples:
    prompt = tokenizer.encode(chat.format([{"role": "user", "content": ex.prompt}],
                                          add_generation_prompt=True))
    response = tokenizer.encode(ex.response + eot) if eot else tokenizer.encode(ex.response) + [
        tokenizer.eos_id]
    n = len(prompt) + len(response)
    if n > seq_len:
      _fail_or_skip(on_error, report, "too_long",
                    f"{ex.where}: {n} tokens ({len(prompt)} prompt + {len(response)} response) "
                    f"> sft.seq_len {seq_len}")
      continue
    out.append(Tokenized(np.asarray(prompt + response, np.int32), len(prompt), ex.kind))
  return out


def pack_rows(items: Sequence[Tokenized], seq_len: int, pad_id: int, pack: bool = True
              ) -> dict[str, np.ndarray]:
  """Greedy in-order packing into rows [R, seq_len] (tokens, positions, segment_ids, loss_mask).

  An item goes into the current row if it fits, else a new row starts; with
  pack=False every item gets its own row. loss_mask is 1 on response tokens.
  """
  rows: list[list[Tokenized]] = []
  used = seq_len + 1
  for it in items:
    if not pack or used + len(it.ids) > seq_len:
      rows.append([])
      used = 0
    rows[-1].append(it)
    used += len(it.ids)
  R = len(rows)
  out = dict(tokens=np.full((R, seq_len), pad_id, np.int32), positions=np.zeros((R, seq_len), np.int32),
             segment_ids=np.zeros((R, seq_len), np.int32), loss_mask=np.zeros((R, seq_len), np.int32))
  for r, row in enumerate(rows):
    at = 0
    for seg, it in enumerate(row, start=1):
      L = len(it.ids)
      out["tokens"][r, at:at + L] = it.ids
      out["positions"][r, at:at + L] = np.arange(L)
      out["segment_ids"][r, at:at + L] = seg
      out["loss_mask"][r, at + it.n_prompt:at + L] = 1
      at += L
  return out


def epoch_order(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> list[tuple[int, int]]:
  """(source, index) pairs of one epoch: sources mixed in ratio `weights`, shuffled.

  The source with the largest size/weight appears exactly once per epoch; the
  others get round(L * share) items, cycling through their own shuffled order.
  """
  live = [i for i, (n, w) in enumerate(zip(sizes, weights)) if n > 0 and w > 0]
  if not live:
    raise DataError("sft: no training examples (every source is empty or has mix weight 0)")
  total_w = sum(weights[i] for i in live)
  length = max(sizes[i] / (weights[i] / total_w) for i in live)
  picks = []
  for i in live:
    count = int(round(length * weights[i] / total_w))
    order = grain.MapDataset.source(range(sizes[i])).shuffle(seed=_seed(seed, epoch, i))
    picks.extend((i, order[j % sizes[i]]) for j in range(count))
  mixed = grain.MapDataset.source(picks).shuffle(seed=_seed(seed, epoch, 99))
  return [mixed[j] for j in range(len(mixed))]


def _seed(*parts: int) -> int:
  return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


class SFTBatches:
  """Endless deterministic batches {tokens, positions, segment_ids, loss_mask} [B_local, T].

  get_state() -> {"next_batch": k}; set_state() resumes at batch k.
  """

  def __init__(self, sources: Sequence[Sequence[Tokenized]], weights: Sequence[float], *, seq_len: int,
               batch_size: int, pad_id: int, seed: int, pack: bool = True,
               process_index: int | None = None, process_count: int | None = None):
    self.sources, self.weights = [list(s) for s in sources], list(weights)
    self.seq_len, self.batch_size, self.pad_id, self.seed, self.pack = (
        seq_len, batch_size, pad_id, seed, pack)
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % self.process_count:
      raise ValueError(f"sft.batch_size: {batch_size} must be divisible by the {self.process_count} "
                       "processes")
    self._epochs: dict[int, dict[str, np.ndarray]] = {}
    self._counts: list[int] = []
    self._next = 0
    self.rows_per_epoch = self._count(0)

  def _rows(self, epoch: int) -> dict[str, np.ndarray]:
    if epoch not in self._epochs:
      order = epoch_order([len(s) for s in self.sources], self.weights, self.seed, epoch)
      self._epochs = {k: v for k, v in self._epochs.items() if k >= epoch - 1}  # bounded memory
      self._epochs[epoch] = pack_rows([self.sources[i][j] for i, j in order], self.seq_len, self.pad_id,
                                      self.pack)
    return self._epochs[epoch]

  @property
  def batches_per_epoch(self) -> float:
    return self.rows_per_epoch / self.batch_size

  def _count(self, epoch: int) -> int:
    while len(self._counts) <= epoch:
      self._counts.append(len(self._rows(len(self._counts))["tokens"]))
    return self._counts[epoch]

  def _locate(self, row: int) -> tuple[int, int]:
    """(epoch, row within it) of a row of the endless stream (epochs differ in row count)."""
    epoch = 0
    while row >= self._count(epoch):
      row -= self._count(epoch)
      epoch += 1
    return epoch, row

  def batch(self, k: int) -> dict[str, np.ndarray]:
    """Global batch k's rows for this process (rows k*B .. (k+1)*B of the endless row stream)."""
    local = self.batch_size // self.process_count
    start = k * self.batch_size + self.process_index * local
    rows = []
    for t in range(local):
      epoch, r = self._locate(start + t)
      rows.append({key: v[r] for key, v in self._rows(epoch).items()})
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out = self.batch(self._next)
    self._next += 1
    return out

  def get_state(self) -> dict:
    return {"next_batch": self._next}

  def set_state(self, state: dict) -> None:
    self._next = int(state["next_batch"])
