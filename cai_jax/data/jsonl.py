"""Reading JSONL(.gz) files record by record, with errors that name file:line, and the
append-only files that generation stages resume from."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pathlib
import zlib
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger(__name__)


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

  A missing file, a folder, a truncated or corrupt .gz and text that is not UTF-8
  raise `error` naming the file (and the line reached). A line that is not JSON,
  or not a JSON object, raises `error` with the file and line -- or, when
  `on_bad_line` is given, is handed to it as (reason, message) with reason
  "malformed_json" or "not_an_object" and passed over (callers that count and
  skip bad data). Callers then only check their fields.
  """
  def bad(reason: str, message: str) -> None:
    if on_bad_line is None:
      raise error(message)
    on_bad_line(reason, message)

  path = pathlib.Path(path)
  if path.is_dir():
    raise error(f"{path}: is a folder; expected a JSONL file")
  if not path.is_file():
    raise error(f"{path}: no such file")
  gz = path.suffix == ".gz"
  opener = gzip.open if gz else open
  lineno = 0
  with opener(path, "rt", encoding="utf-8") as f:
    lines = iter(f)
    while True:
      try:
        line = next(lines)
      except StopIteration:
        return
      except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        # gzip reports a cut-off download as a bare EOFError that names no file.
        raise error(f"{path}: {'truncated' if isinstance(e, EOFError) else 'not a valid'} gzip file "
                    f"(read {lineno} lines before: {e}); expected a complete .jsonl.gz") from None
      except UnicodeDecodeError as e:
        # Text is decoded in blocks, so the bad byte is at or after the line reached.
        raise error(f"{path}: not UTF-8 text ({e.reason}, at or after line {lineno + 1}); "
                    "expected UTF-8 JSON lines") from None
      lineno += 1
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


def read_appended(path: str | pathlib.Path) -> list[dict]:
  """The complete records of an append-only JSONL that an interrupted run may have left:
  a torn last line (no newline; the process died mid-write) is cut off the file and
  logged. Any other line that is not a JSON object is a ValueError naming file:line."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last record (%d bytes) left by an interrupted run", path,
                len(data) - keep)
    with open(path, "r+b") as f:
      f.truncate(keep)
    data = data[:keep]
  records = []
  for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); this file is written by the "
                       "stage itself: delete it to start over") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    records.append(record)
  return records


def append_records(path: str | pathlib.Path, records: Iterable[dict]) -> None:
  """Appends one JSON line per record and fsyncs, so a record on disk is a complete one."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


class ResumableRecords:
  """An append-only JSONL of records keyed by "id" that a rerun continues: the first line
  holds the settings that made the records (data/fingerprint.py), so a rerun with other
  settings is refused (ValueError naming the changed fields) instead of mixing two runs.

    log = ResumableRecords(path, settings, "eval-safety answers of random:tiny")
    todo = [x for x in items if x.id not in log.done]
    log.add([{"id": ..., ...}, ...])        # appended and fsynced
  """

  def __init__(self, path: str | pathlib.Path, settings: dict, what: str):
    from cai_jax.data import fingerprint

    self.path, self.what = pathlib.Path(path), what
    self._header = fingerprint.settings_record(settings, what)
    self.done: dict[str, dict] = {}
    records = read_appended(self.path)
    if not records:
      return
    header = records[0]
    if "fingerprint" not in header:
      raise ValueError(f"{self.path}:1: expected the settings line this stage writes first; "
                       f"delete {self.path} to start over")
    fingerprint.check_settings(header, settings, what, f"{self.path}:1",
                               f"delete {self.path} to start over, or use a new workdir")
    for lineno, record in enumerate(records[1:], 2):
      rid = record.get("id")
      if not isinstance(rid, str):
        raise ValueError(f"{self.path}:{lineno}:id: expected a string, got {rid!r:.60}")
      if rid in self.done:
        raise ValueError(f"{self.path}:{lineno}:id: {rid!r} appears twice; delete {self.path} "
                         "to start over")
      self.done[rid] = record

  def add(self, records: list[dict]) -> None:
    """Appends `records` (each with a string "id"), after the settings line on first use."""
    first = [] if self.path.exists() and self.path.stat().st_size else [self._header]
    append_records(self.path, first + list(records))
    self.done.update((r["id"], r) for r in records)

  def remove(self) -> None:
    """Deletes the file (its records now live in the stage's finished outputs)."""
    self.path.unlink(missing_ok=True)
