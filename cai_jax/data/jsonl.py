"""Reading JSONL(.gz) files record by record, with errors that name file:line."""

from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Iterator


def iter_jsonl(path: str | pathlib.Path, error: type[Exception] = ValueError,
               ) -> Iterator[tuple[str, dict]]:
  """Yields ("<file>:<line>", record) for every non-blank line of a JSONL(.gz) file.

  A missing file, a line that is not JSON, or a line that is not a JSON object
  raises `error` with the file and line, so callers only check their fields.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise error(f"{path}: no such file")
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
      yield where, record
