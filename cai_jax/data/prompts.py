"""Prompt sets: the ones shipped with cai_jax and the hh-rlhf transcript format.

`load_prompts(spec)` understands:
  * "red_team" / "helpful": cai_jax/resources/prompts/<name>.jsonl, written for
    this project ({"id", "category", "prompt"} per line);
  * a path to a .jsonl or .jsonl.gz file, either in that format or in the
    hh-rlhf format ({"chosen": transcript, "rejected": transcript}), from which
    the first Human turn is the prompt (as in the CAI paper's red-team set).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib
import re

from cai_jax import paths
from cai_jax.data.jsonl import iter_jsonl

BUILTIN = ("red_team", "helpful")
_HUMAN = re.compile(r"\n\nHuman:(.*?)(?=\n\n(?:Human|Assistant):|\Z)", re.S)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt: a stable id (used to resume generation), its text and a category."""

  id: str
  text: str
  category: str = ""


def first_human_turn(transcript: str) -> str | None:
  """The text of the first "\\n\\nHuman: ..." turn of an hh-rlhf transcript, or None."""
  match = _HUMAN.search(transcript)
  return match.group(1).strip() if match else None


def _read_jsonl(path: paths.AnyPath, limit: int | None, dedupe: bool) -> list[Prompt]:
  prompts: list[Prompt] = []
  seen: set[str] = set()
  stem = path.name.split(".")[0]
  for where, record in iter_jsonl(path):
    if limit is not None and len(prompts) >= limit:
      break
    line_no = where.line
    if "prompt" in record:
      text, pid = record["prompt"], str(record.get("id", f"{stem}-{line_no:06d}"))
      category = str(record.get("category", ""))
    elif "chosen" in record:
      if not isinstance(record["chosen"], str):
        raise ValueError(f"{where}:chosen: expected a transcript string, got "
                         f"{type(record['chosen']).__name__}")
      text, pid, category = first_human_turn(record["chosen"]), f"{stem}-{line_no:06d}", "hh-rlhf"
      if text is None:
        raise ValueError(f"{where}: field 'chosen' has no '\\n\\nHuman:' turn")
    else:
      raise ValueError(f"{where}: expected a field 'prompt' (cai_jax format) or "
                       f"'chosen' (hh-rlhf format); got fields {sorted(record)}")
    field = "prompt" if "prompt" in record else "chosen"
    if not isinstance(text, str):
      raise ValueError(f"{where}:{field}: expected a string, got {type(text).__name__}")
    if not text.strip():
      raise ValueError(f"{where}:{field}: the prompt text is empty")
    if dedupe and text in seen:
      continue
    seen.add(text)
    prompts.append(Prompt(id=pid, text=text.strip(), category=category))
  if not prompts and limit != 0:
    raise ValueError(f"{path}: no prompts (the file holds no JSON lines); expected one "
                     '{"prompt": ...} or {"chosen": ...} object per line')
  ids = [p.id for p in prompts]
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise ValueError(f"{path}: prompt id {dup!r} appears more than once")
  return prompts


def builtin_path(name: str) -> pathlib.Path:
  """Path of a prompt set shipped in cai_jax/resources/prompts."""
  return pathlib.Path(str(importlib.resources.files("cai_jax") / "resources" / "prompts" / f"{name}.jsonl"))


def load_prompts(spec: str, limit: int | None = None, dedupe: bool = True) -> list[Prompt]:
  """Prompts from a built-in set name or a JSONL(.gz) path, local or a URL (gs://...; see
  the module docstring)."""
  if spec in BUILTIN:
    path = builtin_path(spec)
  else:
    path = paths.as_path(spec)
    if not path.is_file():
      raise ValueError(f"prompts: {spec!r} is neither a built-in set {BUILTIN} nor an existing file")
  return _read_jsonl(path, limit, dedupe)
