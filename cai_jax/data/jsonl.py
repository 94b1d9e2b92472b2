"""Reading JSONL(.gz) files record by record, with errors that name file:line."""

from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Callable, Iterator


class Where(str):
  """"<file>:<line>" for messages, with the line number as `.line`."""

  line: int

  def __new__(cls, path: pathlib.Path, line: int) -> "Where":
    where = super().__new__(cls, f"{path}:{line}")
    where.line = line
    return where


def iter_jsonl(path: str | pathlib.Path, error: type[Exception] = ValueError,
               on_bad_line: Callable[[str, str], None] | None = None,
               ) -> Iterator[tuple[Where, dict]]:
  """Yields (Where("<file>:<line>"), record) for every non-blank line of a JSONL(.gz) file.

  A missing file raises `error`. A line that is not JSON, or not a JSON
  object, raises `error` with the file and line -- or, when `on_bad_line` is
  given, is handed to it as (reason, message) with reason "malformed_json" or
  "not_an_object" and passed over (callers that count and skip bad data).
  Callers then only check their fields.
  """
  def bad(reason: str, message: str) -> None:
    if on_bad_line is None:
      raise error(message)
    on_bad_line(reason, message)

  path = pathlib.Path(path)
  if not path.is_file():
    raise error(f"{path}: no such file")
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = Where(path, lineno)
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        bad("malformed_json", f"{where}: not valid JSON ({e.msg} at column {e.colno})")
        continue
      if not isinstance(record, dict):
        bad("not_an_object", f"{where}: expected a JSON object, got {type(record).__name__}")
        continue
      yield where, record
