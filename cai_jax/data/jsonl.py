"""Reading JSONL(.gz) files record by record, with errors that name file:line, and the
append-only files that generation stages resume from, one shard per host.

Paths may be local or URLs (gs://...; cai_jax/paths.py). A generation stage on N hosts
gives item i to host i % N (`Host.share`); each host appends its records to its own
shard of a `ResumableRecords` log, and once every host has finished, process 0 merges
the shards in item order (`ResumableRecords.merged`), so N hosts write exactly what one
host writes. On object storage, where nothing can be appended, each batch is a part
object of its own, written whole (paths.write_atomically).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from cai_jax import paths

log = logging.getLogger(__name__)
T = TypeVar("T")


class Where(str):
  """"<file>:<line>" for messages, with the line number as `.line`."""

  line: int

  def __new__(cls, path: str | os.PathLike, line: int) -> "Where":
    where = super().__new__(cls, f"{path}:{line}")
    where.line = line
    return where


def _text(raw, gz: bool) -> io.TextIOBase:
  """UTF-8 text lines of a binary file object (a local file or an object-store blob)."""
  return gzip.open(raw, "rt", encoding="utf-8") if gz else io.TextIOWrapper(raw, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError,
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

  path = paths.as_path(path)
  if path.is_dir():
    raise error(f"{path}: is a folder; expected a JSONL file")
  if not path.is_file():
    raise error(f"{path}: no such file")
  lineno = 0
  with path.open("rb") as raw, _text(raw, gz=path.suffix == ".gz") as f:
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


def read_appended(path: str | os.PathLike, repair: bool = True) -> list[dict]:
  """The complete records of an append-only JSONL that an interrupted run may have left:
  a torn last line (no newline; the process died mid-write) is left out and logged, and
  with `repair` (the file's own writer, on a local disk) cut off the file. Any other line
  that is not a JSON object is a ValueError naming file:line."""
  path = paths.as_path(path)
  if not path.exists():
    return []
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last record (%d bytes) left by an interrupted run", path,
                len(data) - keep)
    if repair and not paths.is_remote(path):
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


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
  """Appends one JSON line per record and fsyncs, so a record on disk is a complete one."""
  paths.append_lines(path, [json.dumps(r, ensure_ascii=False) + "\n" for r in records])


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
  """Writes a whole JSONL file (local or remote) atomically: all of it or none of it."""
  paths.write_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ----------------------------------------------------------------------------- hosts and shards


@dataclasses.dataclass(frozen=True)
class Host:
  """This process among the `count` processes of a run: item i is host (i % count)'s."""

  index: int = 0
  count: int = 1

  def share(self, items: Sequence[T]) -> list[T]:
    """This host's items, in their order: items index, index + count, ..."""
    return list(items[self.index::self.count])


_SHARD = re.compile(r"-(\d{5})-of-(\d{5})(?:\.(\d{6}))?$")  # <stem>-<host>-of-<hosts>[.<part>]


class ResumableRecords:
  """An append-only JSONL of records keyed by "id" that a rerun continues: every file of it
  starts with the settings that made the records (data/fingerprint.py), so a rerun with
  other settings is refused (ValueError naming the changed fields) instead of mixing runs.

    log = ResumableRecords(path, settings, "eval-safety answers of random:tiny", host)
    todo = [x for x in host.share(items) if x.id not in log.done]
    log.add([{"id": ..., ...}, ...])        # appended and fsynced (a part object remotely)
    records = log.merged([x.id for x in items])   # process 0, after every host finished

  One host on a disk writes `path` itself; host k of n > 1 writes <stem>-k-of-n<suffix>
  beside it; on object storage each `add` is a part <stem>-k-of-n.<part><suffix>. `done`
  holds this host's own records and those of shards left by a run with another number
  of hosts (read, never repaired: their writer is gone); shards of the other hosts of this
  run are being written now and are only read by `merged`.
  """

  def __init__(self, path: str | os.PathLike, settings: dict, what: str, host: Host = Host()):
    from cai_jax.data import fingerprint

    self.path, self.what, self.host = paths.as_path(path), what, host
    self.remote = paths.is_remote(self.path)
    self.settings = settings
    self._header = fingerprint.settings_record(settings, what)
    self._parts = 0
    self.done: dict[str, dict] = {}
    for file, (index, count, part) in self._files():
      mine = (index, count) == (host.index, host.count)
      if count == host.count and not mine:
        continue
      if mine and part is not None:
        self._parts = max(self._parts, part)
      for record in self._read(file, repair=mine):
        self.done.setdefault(record["id"], record)

  # ------------------------------------------------------------------ files
  def _own(self):
    """The file this host appends to (on a disk)."""
    if self.host.count == 1:
      return self.path
    return self.path.with_name(f"{self.path.stem}-{self.host.index:05d}-of-"
                               f"{self.host.count:05d}{self.path.suffix}")

  def _files(self) -> list[tuple[object, tuple[int, int, int | None]]]:
    """Every file of this log: (path, (host index, host count, part number or None))."""
    found = [(self.path, (0, 1, None))] if self.path.is_file() else []
    if self.path.parent.is_dir():
      for file in sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}")):
        match = _SHARD.search(file.name[:len(file.name) - len(self.path.suffix)])
        if match and file.name.startswith(self.path.stem + "-"):
          part = None if match.group(3) is None else int(match.group(3))
          found.append((file, (int(match.group(1)), int(match.group(2)), part)))
    return found

  def _read(self, file, repair: bool) -> list[dict]:
    """One file's records after its settings line, checked against this run's settings."""
    from cai_jax.data import fingerprint

    records = read_appended(file, repair=repair)
    if not records:
      return []
    if "fingerprint" not in records[0]:
      raise ValueError(f"{file}:1: expected the settings line this stage writes first; "
                       f"delete {file} to start over")
    fingerprint.check_settings(records[0], self.settings, self.what, f"{file}:1",
                               f"delete {file} to start over, or use a new workdir")
    seen: set[str] = set()
    for lineno, record in enumerate(records[1:], 2):
      rid = record.get("id")
      if not isinstance(rid, str):
        raise ValueError(f"{file}:{lineno}:id: expected a string, got {rid!r:.60}")
      if rid in seen:
        raise ValueError(f"{file}:{lineno}:id: {rid!r} appears twice; delete {file} to start over")
      seen.add(rid)
    return records[1:]

  # ------------------------------------------------------------------ writing
  def add(self, records: list[dict]) -> None:
    """Appends `records` (each with a string "id"): to this host's file after the settings
    line on first use, or, on object storage, as a new part object holding both."""
    if self.remote:
      self._parts += 1
      part = self.path.with_name(f"{self.path.stem}-{self.host.index:05d}-of-{self.host.count:05d}"
                                 f".{self._parts:06d}{self.path.suffix}")
      write_records(part, [self._header] + list(records))
    else:
      own = self._own()
      first = [] if own.exists() and paths.size(own) else [self._header]
      append_records(own, first + list(records))
    self.done.update((r["id"], r) for r in records)

  def merged(self, order: Sequence[str], known: dict[str, dict] | None = None) -> list[dict]:
    """Every host's records (and `known` ones, e.g. a finished output's), in `order` (item
    ids), once all hosts have finished; a ValueError names the ids found nowhere."""
    found: dict[str, dict] = dict(known or {})
    for file, _ in self._files():
      for record in self._read(file, repair=False):
        found.setdefault(record["id"], record)
    missing = [rid for rid in order if rid not in found]
    if missing:
      raise ValueError(f"{self.what}: {len(missing)} of {len(order)} records are in no shard of "
                       f"{self.path} (first: {missing[0]!r}); a host did not finish: rerun")
    return [found[rid] for rid in order]

  def finish(self, out: str | os.PathLike, order: Sequence[str],
             known: dict[str, dict] | None = None,
             sync: Callable[[str], None] = lambda name: None) -> list[dict] | None:
    """After this host's last `add`: waits for every host (`sync(name)`, a barrier), then
    host 0 writes `out` with all records in `order` (atomically) and deletes the shards.
    Returns the records on host 0 and None on the others."""
    sync(f"{self.path}: every host wrote its shard")
    records = None
    if self.host.index == 0:
      records = self.merged(order, known)
      write_records(out, records)
      self.remove()
    sync(f"{self.path}: merged")
    return records

  def remove(self) -> None:
    """Deletes every file of the log (its records now live in the stage's finished outputs)."""
    for file, _ in self._files():
      file.unlink(missing_ok=True)
