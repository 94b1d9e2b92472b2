"""Constitutions: principles with tiers, few-shot examples, context profiles.

Formats (see constitutions/base.toml, few_shot.toml, profiles/*.toml):
  * our TOML: `[[principle]]` tables (id, tier, tags, critique, revision,
    feedback), an optional `few_shot = "file.toml"` of `[[example]]` tables;
  * profiles: `[context]`, `remove = [ids]`, `[[override]]`, `[[principle]]`
    layered onto a base. Universal principles cannot be removed, overridden
    or added by a profile (the instruction-hierarchy rule of CAI 2.0);
  * the CAI paper's JSON prompt files (`load_paper_prompts`).
Every validation error names the file, the principle/example and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib
import re
import tomllib
from collections.abc import Mapping, Sequence

import numpy as np

TIERS = ("universal", "contextual", "style")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PRINCIPLE_FIELDS = ("id", "tier", "tags", "critique", "revision", "feedback")
_TEXT_FIELDS = ("critique", "revision", "feedback")
_EXAMPLE_FIELDS = ("prompt", "answer", "principle", "critique_request", "critique",
                   "revision_request", "revision")


class ConstitutionError(ValueError):
  """A constitution, few-shot or profile file that does not follow the format."""


@dataclasses.dataclass(frozen=True)
class Principle:
  """One principle: how to critique, how to revise, and how to compare two answers."""

  id: str
  critique: str  # request asking the model to critique its last answer
  revision: str  # request asking it to rewrite that answer
  feedback: str  # A/B comparison question for AI feedback
  tier: str = "contextual"  # universal | contextual | style
  tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class FewShotExample:
  """A worked critique/revision. `messages` is the conversation whose last turn
  (an assistant answer) is critiqued: ((role, text), ...), role user|assistant."""

  messages: tuple[tuple[str, str], ...]
  critique_request: str
  critique: str
  revision_request: str
  revision: str


@dataclasses.dataclass(frozen=True)
class Constitution:
  """A named set of principles plus few-shot examples (and the context of a profile)."""

  name: str
  principles: tuple[Principle, ...]
  few_shot: tuple[FewShotExample, ...] = ()
  context: tuple[tuple[str, object], ...] = ()  # profile context, e.g. (("region", "EU"),)

  def __post_init__(self):
    if not self.principles:
      raise ConstitutionError(f"constitution {self.name!r} has no principles")

  @property
  def ids(self) -> tuple[str, ...]:
    return tuple(p.id for p in self.principles)

  def get(self, principle_id: str) -> Principle:
    """The principle with this id (KeyError with the known ids otherwise)."""
    for p in self.principles:
      if p.id == principle_id:
        return p
    raise KeyError(f"no principle {principle_id!r} in {self.name!r}; known: {list(self.ids)}")

  def tier(self, name: str) -> tuple[Principle, ...]:
    return tuple(p for p in self.principles if p.tier == name)

  def sample(self, rng: np.random.Generator, k: int) -> list[Principle]:
    """k principles drawn uniformly and independently (with replacement), as in the paper."""
    return [self.principles[i] for i in rng.integers(0, len(self.principles), size=k)]


# ----------------------------------------------------------------------------- validation helpers


def _where(path, kind: str, index: int, table: Mapping) -> str:
  ident = table.get("id") if isinstance(table, Mapping) else None
  return f"{path}: {kind} {ident!r}" if isinstance(ident, str) and ident else f"{path}: {kind} #{index + 1}"


def _check_fields(where: str, table: Mapping, allowed: Sequence[str]) -> None:
  for key in table:
    if key not in allowed:
      hint = difflib.get_close_matches(key, allowed, n=1)
      raise ConstitutionError(f"{where}: field {key!r} is not allowed"
                              + (f"; did you mean {hint[0]!r}?" if hint else f"; expected {list(allowed)}"))


def _text(where: str, table: Mapping, field: str, required: bool = True) -> str | None:
  if field not in table:
    if required:
      raise ConstitutionError(f"{where}: field {field!r} is missing (expected a non-empty string)")
    return None
  value = table[field]
  if not isinstance(value, str) or not value.strip():
    raise ConstitutionError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
  return value.strip()


def _read_toml(path: pathlib.Path) -> dict:
  try:
    return tomllib.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise ConstitutionError(f"{path}: file not found") from None
  except tomllib.TOMLDecodeError as e:
    raise ConstitutionError(f"{path}: invalid TOML: {e}") from None


def _table_list(path, doc: Mapping, key: str) -> list:
  items = doc.get(key, [])
  if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
    raise ConstitutionError(f"{path}: {key!r} must be an array of tables ([[{key}]])")
  return items


def _principle(path, index: int, table: Mapping, allowed_tiers=TIERS) -> Principle:
  where = _where(path, "principle", index, table)
  _check_fields(where, table, _PRINCIPLE_FIELDS)
  pid = _text(where, table, "id")
  if not _ID.match(pid):
    raise ConstitutionError(f"{where}: field 'id' must match {_ID.pattern} (lowercase, digits, - or _)")
  tier = table.get("tier", "contextual")
  if tier not in allowed_tiers:
    raise ConstitutionError(f"{where}: field 'tier' is {tier!r}; expected one of {list(allowed_tiers)}")
  tags = table.get("tags", [])
  if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
    raise ConstitutionError(f"{where}: field 'tags' must be a list of strings, got {tags!r}")
  texts = {f: _text(where, table, f) for f in _TEXT_FIELDS}
  return Principle(id=pid, tier=tier, tags=tuple(tags), **texts)


def _check_unique(path, principles: Sequence[Principle]) -> None:
  seen: set[str] = set()
  for p in principles:
    if p.id in seen:
      raise ConstitutionError(f"{path}: principle {p.id!r}: field 'id' is duplicated")
    seen.add(p.id)


# ----------------------------------------------------------------------------- our TOML format


def load_few_shot(path, principles: Sequence[Principle] = ()) -> tuple[FewShotExample, ...]:
  """Reads `[[example]]` tables; `principle = id` takes its requests from `principles`."""
  path = pathlib.Path(path)
  by_id = {p.id: p for p in principles}
  examples = []
  for i, table in enumerate(_table_list(path, _read_toml(path), "example")):
    where = f"{path}: example #{i + 1}"
    _check_fields(where, table, _EXAMPLE_FIELDS)
    if "principle" in table:
      pid = _text(where, table, "principle")
      if pid not in by_id:
        raise ConstitutionError(f"{where}: field 'principle' names {pid!r}, which is not in the "
                                f"constitution; known: {sorted(by_id)}")
      critique_req, revision_req = by_id[pid].critique, by_id[pid].revision
    else:
      critique_req = _text(where, table, "critique_request")
      revision_req = _text(where, table, "revision_request")
    examples.append(FewShotExample(
        messages=(("user", _text(where, table, "prompt")), ("assistant", _text(where, table, "answer"))),
        critique_request=critique_req, critique=_text(where, table, "critique"),
        revision_request=revision_req, revision=_text(where, table, "revision")))
  return tuple(examples)


def _apply_profile(base: Constitution, path: pathlib.Path) -> Constitution:
  """Layers a profile onto `base`; universal principles stay exactly as they are."""
  doc = _read_toml(path)
  _check_fields(f"{path}: profile", doc, ("name", "context", "remove", "override", "principle"))
  principles = {p.id: p for p in base.principles}

  def editable(pid, field, action):
    if pid not in principles:
      raise ConstitutionError(f"{path}: principle {pid!r}: field {field!r}: cannot {action} a "
                              f"principle the base does not have; known: {sorted(principles)}")
    if principles[pid].tier == "universal":
      raise ConstitutionError(f"{path}: principle {pid!r}: field {field!r}: universal-tier "
                              f"principles cannot be {action}d by a profile")

  remove = doc.get("remove", [])
  if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
    raise ConstitutionError(f"{path}: field 'remove' must be a list of principle ids")
  for pid in remove:
    editable(pid, "remove", "remove")
    del principles[pid]
  for i, table in enumerate(_table_list(path, doc, "override")):
    where = _where(path, "override", i, table)
    _check_fields(where, table, _PRINCIPLE_FIELDS)
    pid = _text(where, table, "id")
    editable(pid, "override", "override")
    merged = {**dataclasses.asdict(principles[pid]), **table}
    merged["tags"] = list(merged["tags"])
    principles[pid] = _principle(path, i, merged, allowed_tiers=("contextual", "style"))
  for i, table in enumerate(_table_list(path, doc, "principle")):
    p = _principle(path, i, table, allowed_tiers=("contextual", "style"))
    if p.id in principles:
      raise ConstitutionError(f"{path}: principle {p.id!r}: field 'id' already exists in the base; "
                              "use [[override]] to change it")
    principles[p.id] = p
  context = doc.get("context", {})
  if not isinstance(context, dict):
    raise ConstitutionError(f"{path}: field 'context' must be a table")
  name = f"{base.name}+{doc.get('name', path.stem)}"
  return dataclasses.replace(base, name=name, principles=tuple(principles.values()),
                             context=tuple(sorted(context.items())))


def load_constitution(path, profile=None, few_shot=None) -> Constitution:
  """Loads a TOML constitution, its few-shot file, and optionally a profile on top.

  `few_shot` overrides the file named in the constitution ("" = none).
  """
  path = pathlib.Path(path)
  doc = _read_toml(path)
  _check_fields(f"{path}", doc, ("name", "version", "description", "few_shot", "principle"))
  tables = _table_list(path, doc, "principle")
  if not tables:
    raise ConstitutionError(f"{path}: no [[principle]] tables; a constitution needs at least one")
  principles = [_principle(path, i, t) for i, t in enumerate(tables)]
  _check_unique(path, principles)
  shot_file = doc.get("few_shot", "") if few_shot is None else few_shot
  examples = ()
  if shot_file:
    shot_path = pathlib.Path(shot_file)
    examples = load_few_shot(shot_path if shot_path.is_absolute() else path.parent / shot_path,
                             principles)
  constitution = Constitution(name=str(doc.get("name", path.stem)), principles=tuple(principles),
                              few_shot=examples)
  if profile:
    constitution = _apply_profile(constitution, pathlib.Path(profile))
  return constitution


# ----------------------------------------------------------------------------- the paper's JSON files

_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def _strip_label(text: str, label: str, answer_label: str) -> str:
  """'\\n\\nCritiqueRequest: ...\\n\\nCritique:' -> '...'."""
  text = text.strip()
  if text.startswith(label + ":"):
    text = text[len(label) + 1:]
  if text.endswith(answer_label + ":"):
    text = text[:-len(answer_label) - 1]
  return text.strip()


def _paper_example(path, index: int, text: str) -> FewShotExample:
  parts = _TURN.split(text)
  turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
  labels = [t[0] for t in turns]
  try:
    c = labels.index("CritiqueRequest")
  except ValueError:
    raise ConstitutionError(f"{path}: example #{index + 1}: no 'CritiqueRequest:' turn") from None
  after = dict(turns[c:])
  for field in ("Critique", "RevisionRequest", "Revision"):
    if not after.get(field):
      raise ConstitutionError(f"{path}: example #{index + 1}: field {field!r} is missing or empty")
  roles = {"Human": "user", "Assistant": "assistant"}
  messages = tuple((roles[k], v) for k, v in turns[:c] if k in roles)
  if not messages or messages[-1][0] != "assistant":
    raise ConstitutionError(f"{path}: example #{index + 1}: the conversation must end with an "
                            "Assistant turn before the CritiqueRequest")
  return FewShotExample(messages=messages, critique_request=after["CritiqueRequest"],
                        critique=after["Critique"], revision_request=after["RevisionRequest"],
                        revision=after["Revision"])


def load_paper_prompts(directory) -> Constitution:
  """The CAI paper's prompt files as a Constitution.

  Reads CritiqueRevisionInstructions.json ({"harmfulN": {"prompt": [critique],
  "edit_request": revision}}), CritiqueRevisionFewShotPrompts.json (transcripts)
  and RLMadisonInstructions.json (feedback questions ending "Options:"). The
  paper draws critique/revision pairs and feedback questions from two separate
  lists of 16; here the i-th of each share a Principle (both are drawn
  uniformly, so the pairing does not change either distribution). The
  "CritiqueRequest:"/"Critique:" labels are stripped; the text is unchanged.
  All principles get tier "universal" and tag "paper".
  """
  directory = pathlib.Path(directory)

  def read(name):
    path = directory / name
    try:
      return path, json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
      raise ConstitutionError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
      raise ConstitutionError(f"{path}: invalid JSON: {e}") from None

  cr_path, pairs = read("CritiqueRevisionInstructions.json")
  fb_path, questions = read("RLMadisonInstructions.json")
  shot_path, shots = read("CritiqueRevisionFewShotPrompts.json")
  if not isinstance(pairs, dict) or not pairs:
    raise ConstitutionError(f"{cr_path}: expected an object of {{'harmfulN': {{...}}}} entries")
  if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions) or not questions:
    raise ConstitutionError(f"{fb_path}: expected a list of strings")
  principles = []
  for i, (key, entry) in enumerate(pairs.items()):
    where = f"{cr_path}: principle {key!r}"
    if not isinstance(entry, dict):
      raise ConstitutionError(f"{where}: expected an object with 'prompt' and 'edit_request'")
    prompt = entry.get("prompt")
    if isinstance(prompt, list):
      prompt = prompt[0] if prompt else None
    if not isinstance(prompt, str) or not prompt.strip():
      raise ConstitutionError(f"{where}: field 'prompt' must be a non-empty string or list of them")
    edit = _text(where, entry, "edit_request")
    feedback = questions[i % len(questions)].strip()
    feedback = feedback[:-len("Options:")].strip() if feedback.endswith("Options:") else feedback
    principles.append(Principle(
        id=f"paper-{key}".lower(), critique=_strip_label(prompt, "CritiqueRequest", "Critique"),
        revision=_strip_label(edit, "RevisionRequest", "Revision"), feedback=feedback,
        tier="universal", tags=("paper",)))
  if not isinstance(shots, list):
    raise ConstitutionError(f"{shot_path}: expected a list of transcript strings")
  examples = tuple(_paper_example(shot_path, i, s) for i, s in enumerate(shots))
  return Constitution(name="cai-paper", principles=tuple(principles), few_shot=examples)


def load(spec: str, profile: str | None = None, few_shot: str | None = None) -> Constitution:
  """A constitution from a TOML path, or from the paper's prompt directory (`paper:<dir>`)."""
  if spec.startswith("paper:"):
    constitution = load_paper_prompts(spec[len("paper:"):])
    if profile:
      constitution = _apply_profile(constitution, pathlib.Path(profile))
    return constitution
  return load_constitution(spec, profile=profile, few_shot=few_shot)
