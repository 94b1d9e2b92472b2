"""Red-team prompt files users already have, to seed the self-audit battery.

Reads CSV (.csv, .tsv) or JSONL (.jsonl, .jsonl.gz) with the request in a column named
(case-insensitive, first match wins):
  prompt | behavior | behaviour | goal
as HarmBench's behaviour CSVs (Behavior, SemanticCategory, ContextString, BehaviorID) and
AdvBench's harmful_behaviors.csv (goal, target) ship them. Optional columns: a category
(category | semanticcategory | semantic_category | functionalcategory), an id
(id | behaviorid | behavior_id), and a context (contextstring | context), which goes
before the request, as HarmBench's contextual behaviours need it. Extra columns are
ignored. Errors name file:line(:column) and what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from collections.abc import Iterator, Mapping

from cai_jax.data.jsonl import iter_jsonl

PROMPT_COLUMNS = ("prompt", "behavior", "behaviour", "goal")
CATEGORY_COLUMNS = ("category", "semanticcategory", "semantic_category", "functionalcategory")
ID_COLUMNS = ("id", "behaviorid", "behavior_id")
CONTEXT_COLUMNS = ("contextstring", "context")


class RedTeamDataError(ValueError):
  """A malformed red-team prompt file; the message names file:line and the column."""


@dataclasses.dataclass(frozen=True)
class SeedPrompt:
  """One red-team request from a user's file."""

  id: str
  text: str
  category: str = ""
  where: str = ""  # "file:line"


def _column(names, wanted: tuple[str, ...]) -> str | None:
  """The first of `names` whose lower-cased form is in `wanted` (in `wanted`'s order)."""
  lowered = {str(n).strip().lower(): n for n in names if n is not None}
  return next((lowered[w] for w in wanted if w in lowered), None)


def _seed(where: str, record: Mapping, columns: dict, line: int, stem: str) -> SeedPrompt:
  text = record.get(columns["prompt"])
  if not isinstance(text, str) or not text.strip():
    raise RedTeamDataError(f"{where}:{columns['prompt']}: expected a non-empty request, got {text!r:.80}")
  context = record.get(columns["context"]) if columns["context"] else None
  if isinstance(context, str) and context.strip():
    text = f"{context.strip()}\n\n---\n\n{text.strip()}"
  category = record.get(columns["category"], "") if columns["category"] else ""
  rid = record.get(columns["id"], "") if columns["id"] else ""
  return SeedPrompt(id=str(rid).strip() or f"{stem}-{line:06d}", text=text.strip(),
                    category=str(category or "").strip(), where=where)


def _columns(where: str, names) -> dict:
  """Which column holds what; `where` ("file:line") names the header or the record."""
  prompt = _column(names, PROMPT_COLUMNS)
  if prompt is None:
    raise RedTeamDataError(f"{where}: no request column; expected one of {list(PROMPT_COLUMNS)} "
                           f"(any case), found {sorted(str(n) for n in names if n is not None)}")
  return dict(prompt=prompt, category=_column(names, CATEGORY_COLUMNS),
              id=_column(names, ID_COLUMNS), context=_column(names, CONTEXT_COLUMNS))


def _iter_csv(path: pathlib.Path) -> Iterator[SeedPrompt]:
  stem = path.name.split(".")[0]
  with path.open(newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
    if not reader.fieldnames:
      raise RedTeamDataError(f"{path}:1: empty file; expected a header row with a request column")
    columns = _columns(f"{path}:1", reader.fieldnames)
    for row in reader:
      line = reader.line_num  # the row's last physical line (quoted fields may span lines)
      where = f"{path}:{line}"
      if None in row:
        raise RedTeamDataError(f"{where}: {len(reader.fieldnames) + len(row[None])} fields, but the "
                               f"header has {len(reader.fieldnames)}; quote fields that hold commas")
      if not any((v or "").strip() for v in row.values()):
        continue
      yield _seed(where, row, columns, line, stem)


def _iter_jsonl(path: pathlib.Path) -> Iterator[SeedPrompt]:
  stem = path.name.split(".")[0]
  for where, record in iter_jsonl(path, RedTeamDataError):
    yield _seed(str(where), record, _columns(str(where), list(record)), where.line, stem)


def load_redteam(path: str | pathlib.Path, limit: int = -1) -> list[SeedPrompt]:
  """Requests from a CSV/TSV or JSONL(.gz) red-team file; `limit` >= 0 keeps the first ones."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise RedTeamDataError(f"{path}: no such file")
  if path.suffix in (".csv", ".tsv"):
    rows = _iter_csv(path)
  elif path.name.endswith((".jsonl", ".jsonl.gz")):
    rows = _iter_jsonl(path)
  else:
    raise RedTeamDataError(f"{path}: unknown format; expected .csv, .tsv, .jsonl or .jsonl.gz")
  seeds: list[SeedPrompt] = []
  first: dict[str, str] = {}
  for seed in rows:
    if 0 <= limit <= len(seeds):
      break
    if seed.id in first:
      raise RedTeamDataError(f"{seed.where}: duplicate id {seed.id!r} (first at {first[seed.id]})")
    first[seed.id] = seed.where
    seeds.append(seed)
  if not seeds:
    raise RedTeamDataError(f"{path}: no requests")
  return seeds
