"""Which settings made an output, and one run at a time in a stage folder.

A rerun continues what it finds (a JSONL appended to, checkpoints resumed from),
which is right only when the rerun has the settings that made it. So an output
carries a fingerprint of those settings: `check_or_write(path, settings, what)`
stores them in a small JSON file on the first run and refuses a later run whose
settings differ, naming the fields that changed, the file, and how to go on.

`stage_lock(directory)` holds an exclusive `flock` for the length of a run, so a
second run on the same folder refuses at once instead of interleaving its
writes. The lock is taken on the folder itself rather than on a `.lock` file in
it: nothing is left behind for the documented run tree to account for, and the
operating system drops the lock when the process dies, `kill -9` included.
Object storage (a gs:// workdir) has no locks: there the lock is a no-op that says so
in the log, and one run at a time is the user's to keep.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from cai_jax import paths

log = logging.getLogger(__name__)

MAX_LISTED = 8  # changed fields named in one message; the rest are counted


class StageBusy(FileExistsError):
  """Another live run holds the lock of a stage folder."""


def normalise(settings: Mapping[str, Any]) -> dict:
  """`settings` as plain JSON values (tuples -> lists, unknown objects -> str), keys sorted."""
  return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
  """A short stable hash (16 hex digits) of a JSON-able description of settings."""
  text = json.dumps(normalise(settings), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
  """{"optim": {"lr": 1}} -> {"optim.lr": 1}; list items by index ("models.0")."""
  if isinstance(settings, Mapping):
    items = settings.items()
  elif isinstance(settings, list):
    items = ((str(i), v) for i, v in enumerate(settings))
  else:
    return {prefix: settings}
  flat: dict[str, Any] = {}
  for key, value in items:
    flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  if not flat and prefix:
    flat[prefix] = settings  # an empty dict / list is a value of its own
  return flat


_ABSENT = object()


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """"field: old -> new" for every dotted field whose value differs (absent = <none>)."""
  a, b = flatten(normalise(old)), flatten(normalise(new))
  return [f"{k}: {_short(a.get(k, _ABSENT))} -> {_short(b.get(k, _ABSENT))}"
          for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def _short(value: Any) -> str:
  text = "<none>" if value is _ABSENT else repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def check_settings(stored: Mapping[str, Any], settings: Mapping[str, Any], what: str,
                   where: str | pathlib.Path, remedy: str) -> None:
  """Raises ValueError when `stored` ({"fingerprint", "settings"}, as check_or_write writes it)
  is not `settings`: names `what`, the changed fields, `where` they are stored, and `remedy`."""
  if stored.get("fingerprint") == settings_fingerprint(settings):
    return
  changes = changed_fields(stored.get("settings") or {}, settings)
  listed = "; ".join(changes[:MAX_LISTED])
  if len(changes) > MAX_LISTED:
    listed += f"; and {len(changes) - MAX_LISTED} more"
  raise ValueError(f"{what}: made with other settings (recorded in {where}); changed: "
                   f"{listed or 'the fingerprint only'}. Rerun with the recorded settings to "
                   f"continue it, or {remedy}")


def read_settings_file(path: str | pathlib.Path) -> dict:
  """A settings file as check_or_write wrote it; ValueError naming it when it is not one."""
  path = paths.as_path(path)
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a settings file ({e}); delete it together with the outputs "
                     "beside it, or use a new workdir") from None
  if not isinstance(stored, dict) or "fingerprint" not in stored:
    raise ValueError(f"{path}: expected a JSON object with a 'fingerprint' field; delete it "
                     "together with the outputs beside it, or use a new workdir")
  return stored


def write_atomically(path: str | pathlib.Path, text: str) -> None:
  """Writes `text` to `path` (local or remote) through a temporary file renamed into place."""
  paths.write_atomically(path, text)


def settings_record(settings: Mapping[str, Any], what: str) -> dict:
  """The JSON object stored for `settings`: {"what", "fingerprint", "settings"}."""
  return {"what": what, "fingerprint": settings_fingerprint(settings),
          "settings": normalise(settings)}


def check_or_write(path: str | pathlib.Path, settings: Mapping[str, Any], what: str,
                   remedy: str = "") -> str:
  """The fingerprint of `settings`, stored in `path` when it does not exist yet.

  When `path` exists with another fingerprint, raises ValueError naming `what`, the changed
  fields and `path`, and saying how to go on: `remedy`, by default a new workdir, or
  deleting `path` and the outputs it describes.
  """
  path = paths.as_path(path)
  if path.is_file():
    check_settings(read_settings_file(path), settings, what, path, remedy or
                   f"use a new workdir, or delete {path} and the outputs it describes to start over")
  else:
    write_atomically(path, json.dumps(settings_record(settings, what), indent=1, sort_keys=True))
  return settings_fingerprint(settings)


@contextlib.contextmanager
def stage_lock(directory: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """Holds an exclusive lock on `directory` (created if needed) while the block runs; raises
  StageBusy at once when another run holds it. A remote folder cannot be locked: logged."""
  if paths.is_remote(directory):
    paths.as_path(directory).mkdir(parents=True, exist_ok=True)
    log.warning("%s: object storage has no locks; make sure no other run writes here now",
                directory)
    yield paths.as_path(directory)
    return
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:  # hosts of one multi-host run: process 0 holds the lock
    yield directory
    return
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise StageBusy(f"{directory}: another run is writing here now (it holds the folder's lock); "
                    "wait for it to finish, or give this run another workdir") from None
  try:
    yield directory
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
