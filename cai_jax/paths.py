"""Paths that may be local or on object storage (gs://...), through etils.epath.

  as_path("runs/x")          -> pathlib.Path   (local: the full pathlib API; fsync and flock work)
  as_path("gs://bucket/x")   -> epath.Path     (etils' backends, the path library orbax uses)

Local paths stay pathlib.Path so that everything a run does on a disk is exactly what it
did before; a URL ("<scheme>://...") becomes an epath.Path. Both are os.PathLike
PurePaths with the same exists / is_file / is_dir / mkdir / open / read_text /
write_text / read_bytes / glob / iterdir / unlink API, and code that must work on both
keeps to it (epath's stat() has no st_size; there are no symlinks or flock on a bucket).

Object stores differ from a disk in two ways that writers care about: an object cannot
be appended to, and an object appears whole only when its upload closes. So:
  * `write_atomically(path, data)` writes a temporary file (or object) and renames it
    into place: a reader never sees half a file, on disk or in a bucket;
  * `append_lines(path, lines)` appends and fsyncs on a disk and refuses a URL: writers
    that must append on object storage write numbered part objects instead (see
    data/jsonl.py ResumableRecords).
Base layer: this module imports only the standard library and etils.
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid
from collections.abc import Iterable

from etils import epath

AnyPath = pathlib.Path | epath.Path  # what as_path returns
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL on an object store or other remote file system (gs://, s3://)."""
  return bool(_URL.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> AnyPath:
  """pathlib.Path for a local path, epath.Path for a URL (see the module docstring)."""
  if isinstance(path, epath.Path) and is_remote(path):
    return path
  return epath.Path(path) if is_remote(path) else pathlib.Path(path)


def size(path: AnyPath) -> int:
  """The size of a file in bytes, local or remote (epath's stat calls it `length`)."""
  stat = path.stat()
  return stat.st_size if hasattr(stat, "st_size") else int(stat.length)


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to `path` whole or not at all: a temporary file in the same
  folder, fsynced on a disk, then renamed over `path`. On object storage the temporary
  object is renamed (copied) into place, so no reader lists a half-uploaded name."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  raw = data.encode("utf-8") if isinstance(data, str) else data
  if not is_remote(path):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
      f.write(raw)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    return
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
  with tmp.open("wb") as f:
    f.write(raw)
  tmp.replace(path)


def append_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Appends `lines` (each ending in a newline) to a local file and fsyncs it, so what is
  on disk after a kill is whole lines plus at most one torn last line. A URL raises
  ValueError: object stores cannot append (write part objects with write_atomically)."""
  if is_remote(path):
    raise ValueError(f"{path}: objects on a remote store cannot be appended to; write each "
                     "batch as its own object (write_atomically)")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
