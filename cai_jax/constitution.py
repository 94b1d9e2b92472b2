"""Constitutions: principles with tiers, topics and stances, stacked profiles, provenance.

Formats (see constitutions/base.toml, few_shot.toml, profiles/*.toml):
  * our TOML: `[[principle]]` tables (id, tier, tags, topics, stance, rule, critique,
    revision, feedback), a `[vocabulary.topics]` table of the topics principles may
    name, an optional `few_shot = "file.toml"` of `[[example]]` tables;
  * profiles: `name`, `remove = [ids]`, `[context]`, `[vocabulary.topics]`,
    `[[override]]`, `[[principle]]`, stacked in order onto a base (region, then
    industry, then an organisation's own layer). Every principle carries its
    provenance: the layer that last defined it and that layer's file;
  * the CAI paper's JSON prompt files (`load_paper_prompts`).

The instruction-hierarchy rule (CAI 2.0): a profile that removes, overrides or adds a
universal principle, or weakens one (a contextual/style principle whose stance on a
topic is looser than a universal principle's), is refused with both sources named.
Conflicts that are not refusals -- two profile layers changing the same principle,
contradicting stances of two layers on one topic -- are kept on
`Constitution.conflicts` (or raised, on_conflict="error"). Every validation error
names the file, the principle/example and the field.
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
STANCES = ("forbid", "caution", "allow")  # strictest first
STRICTNESS = {"forbid": 2, "caution": 1, "allow": 0}
CONFLICT_MODES = ("report", "error")
DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[1] / "constitutions"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PRINCIPLE_FIELDS = ("id", "tier", "tags", "topics", "stance", "rule", "critique", "revision",
                     "feedback")
_TEXT_FIELDS = ("critique", "revision", "feedback")
# The fields that shape generated text: fingerprints of generated data hash these only.
CONTENT_FIELDS = ("id", "critique", "revision", "feedback", "tier", "tags")
_EXAMPLE_FIELDS = ("prompt", "answer", "principle", "critique_request", "critique",
                   "revision_request", "revision")


class ConstitutionError(ValueError):
  """A constitution, few-shot or profile file that does not follow the format or the rules."""


@dataclasses.dataclass(frozen=True)
class Principle:
  """One principle: how to critique, revise and compare answers, what it is about
  (topics, stance), and where it came from (layer, source file)."""

  id: str
  critique: str  # request asking the model to critique its last answer
  revision: str  # request asking it to rewrite that answer
  feedback: str  # A/B comparison question for AI feedback
  tier: str = "contextual"  # universal | contextual | style
  tags: tuple[str, ...] = ()
  topics: tuple[str, ...] = ()  # from the declared vocabulary
  stance: str = ""  # forbid | caution | allow ("" when no topics)
  rule: str = ""  # one plain sentence stating the principle
  layer: str = ""  # provenance: the layer that last defined it ("base" or a profile's name)
  source: str = ""  # provenance: that layer's file

  def content(self) -> dict:
    """The fields that shape generated text (as the records' fingerprints hash them)."""
    return {f: list(getattr(self, f)) if f == "tags" else getattr(self, f) for f in CONTENT_FIELDS}

  @property
  def statement(self) -> str:
    """The principle in one sentence: its rule, else its critique request."""
    return self.rule or self.critique

  @property
  def provenance(self) -> str:
    return f"{self.layer} ({self.source})"


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
class Layer:
  """One file of a stack: the base constitution or a profile."""

  name: str
  source: str
  kind: str  # base | profile
  context: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class Conflict:
  """A clash between two layers that the loader reports rather than refuses."""

  kind: str  # same-principle | contradicting-stances
  principle: str
  other: str  # the other principle (same id for same-principle)
  topic: str  # contradicting-stances: the shared topic
  first: str  # "layer (file)" of the earlier side
  second: str  # "layer (file)" of the later side
  message: str


@dataclasses.dataclass(frozen=True)
class Constitution:
  """A named set of principles plus few-shot examples, the layers it was stacked from,
  the declared topic vocabulary, the conflicts found, and how principles are drawn."""

  name: str
  principles: tuple[Principle, ...]
  few_shot: tuple[FewShotExample, ...] = ()
  context: tuple[tuple[str, object], ...] = ()  # merged profile context, e.g. (("region", "EU"),)
  layers: tuple[Layer, ...] = ()
  conflicts: tuple[Conflict, ...] = ()
  topics: tuple[tuple[str, str], ...] = ()  # (topic, description)
  tier_weights: tuple[tuple[str, float], ...] = ()  # () = uniform draws

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

  def draw_probabilities(self) -> np.ndarray:
    """P(principle i) per draw [n]: 1/n (uniform), or a tier's weight (tiers not named weigh
    1) split evenly over its principles, normalised over the tiers present."""
    n = len(self.principles)
    if not self.tier_weights:
      return np.full(n, 1.0 / n)
    weights = {t: 1.0 for t in TIERS} | dict(self.tier_weights)
    counts = {t: len(self.tier(t)) for t in TIERS}
    per = np.array([weights[p.tier] / counts[p.tier] for p in self.principles], np.float64)
    if per.sum() <= 0:
      raise ConstitutionError(f"constitution {self.name!r}: every tier it has ("
                              f"{sorted(t for t in TIERS if counts[t])}) has weight 0 in "
                              f"tier_weights {dict(self.tier_weights)}; no principle can be drawn")
    return per / per.sum()

  def sample(self, rng: np.random.Generator, k: int) -> list[Principle]:
    """k principles drawn independently (with replacement): uniformly, as in the paper
    (the same draws as ever for a given rng), or by tier weight (`with_tier_weights`)."""
    if not self.tier_weights:
      return [self.principles[i] for i in rng.integers(0, len(self.principles), size=k)]
    idx = rng.choice(len(self.principles), size=k, p=self.draw_probabilities())
    return [self.principles[i] for i in idx]

  def with_tier_weights(self, weights: Mapping[str, float] | None) -> "Constitution":
    """Tier-aware draws with these weights (None = uniform)."""
    if weights is None:
      return dataclasses.replace(self, tier_weights=())
    bad = sorted(set(weights) - set(TIERS))
    if bad:
      raise ConstitutionError(f"tier_weights: unknown tiers {bad}; expected {list(TIERS)}")
    full = tuple((t, float(weights.get(t, 1.0))) for t in TIERS)
    constitution = dataclasses.replace(self, tier_weights=full)
    constitution.draw_probabilities()  # raises if nothing could be drawn
    return constitution

  def subset(self, n: int, seed: int) -> "Constitution":
    """n principles chosen at random by `seed` (file order kept); n < 0 keeps all."""
    if n < 0 or n == len(self.principles):
      return self
    if not 0 < n <= len(self.principles):
      raise ConstitutionError(f"n_principles: {n}; constitution {self.name!r} has "
                              f"{len(self.principles)} principles")
    keep = sorted(np.random.default_rng(seed).choice(len(self.principles), size=n, replace=False))
    return dataclasses.replace(self, principles=tuple(self.principles[i] for i in keep))

  def stance_on(self, topic: str) -> tuple[str, Principle] | None:
    """(strictest stance, the principle holding it) on `topic`; None if no principle names it."""
    holders = [p for p in self.principles if topic in p.topics and p.stance]
    if not holders:
      return None
    best = max(holders, key=lambda p: (STRICTNESS[p.stance], p.tier == "universal"))
    return best.stance, best


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


def _strings(where: str, table: Mapping, field: str) -> tuple[str, ...]:
  value = table.get(field, [])
  if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
    raise ConstitutionError(f"{where}: field {field!r} must be a list of strings, got {value!r}")
  return tuple(value)


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


def _vocabulary(path, doc: Mapping, known: Mapping[str, str]) -> dict[str, str]:
  """`known` plus this file's [vocabulary.topics]; a topic may be declared once."""
  vocab = doc.get("vocabulary", {})
  if not isinstance(vocab, dict) or set(vocab) - {"topics"} or not isinstance(vocab.get("topics", {}), dict):
    raise ConstitutionError(f"{path}: field 'vocabulary' must be a table with one table 'topics' "
                            "(topic = \"description\")")
  topics = dict(known)
  for name, description in vocab.get("topics", {}).items():
    if not _ID.match(name) or not isinstance(description, str) or not description.strip():
      raise ConstitutionError(f"{path}: vocabulary topic {name!r}: expected a lowercase id and a "
                              "non-empty description string")
    if name in topics:
      raise ConstitutionError(f"{path}: vocabulary topic {name!r} is already declared")
    topics[name] = description.strip()
  return topics


def _principle(path, index: int, table: Mapping, layer: str, topics: Mapping[str, str],
               allowed_tiers=TIERS) -> Principle:
  where = _where(path, "principle", index, table)
  _check_fields(where, table, _PRINCIPLE_FIELDS)
  pid = _text(where, table, "id")
  if not _ID.match(pid):
    raise ConstitutionError(f"{where}: field 'id' must match {_ID.pattern} (lowercase, digits, - or _)")
  tier = table.get("tier", "contextual")
  if tier not in allowed_tiers:
    raise ConstitutionError(f"{where}: field 'tier' is {tier!r}; expected one of {list(allowed_tiers)}")
  named = _strings(where, table, "topics")
  for topic in named:
    if topic not in topics:
      hint = difflib.get_close_matches(topic, list(topics), n=1)
      raise ConstitutionError(f"{where}: field 'topics': {topic!r} is not in the declared vocabulary"
                              + (f"; did you mean {hint[0]!r}?" if hint else
                                 "; declare it under [vocabulary.topics]"))
  stance = table.get("stance", "")
  if named and stance not in STANCES:
    raise ConstitutionError(f"{where}: field 'stance' is {stance!r}; a principle with topics needs "
                            f"one of {list(STANCES)}")
  if stance and not named:
    raise ConstitutionError(f"{where}: field 'stance' needs field 'topics' (what it takes a stance on)")
  return Principle(id=pid, tier=tier, tags=_strings(where, table, "tags"), topics=named,
                   stance=stance, rule=_text(where, table, "rule", required=False) or "",
                   layer=layer, source=str(path), **{f: _text(where, table, f) for f in _TEXT_FIELDS})


def _check_unique(path, principles: Sequence[Principle]) -> None:
  seen: set[str] = set()
  for p in principles:
    if p.id in seen:
      raise ConstitutionError(f"{path}: principle {p.id!r}: field 'id' is duplicated")
    seen.add(p.id)


def _check_no_weakening(principles: Sequence[Principle]) -> None:
  """Refuses a non-universal principle whose stance on a topic is looser than a universal
  principle's: that would weaken the universal one. Names both files."""
  universal = [p for p in principles if p.tier == "universal" and p.stance]
  for p in principles:
    if p.tier == "universal" or not p.stance:
      continue
    for u in universal:
      for topic in set(p.topics) & set(u.topics):
        if STRICTNESS[p.stance] < STRICTNESS[u.stance]:
          raise ConstitutionError(
              f"{p.source}: principle {p.id!r} (layer {p.layer}): field 'stance': {p.stance!r} on "
              f"topic {topic!r} weakens universal principle {u.id!r} ({u.source}, layer {u.layer}), "
              f"whose stance is {u.stance!r}; a profile cannot relax a universal principle")


def _stance_conflicts(principles: Sequence[Principle]) -> list[Conflict]:
  """Non-universal principles of different layers that take different stances on a topic."""
  out = []
  for i, a in enumerate(principles):
    for b in principles[i + 1:]:
      if a.layer == b.layer or "universal" in (a.tier, b.tier) or a.stance == b.stance:
        continue
      for topic in sorted(set(a.topics) & set(b.topics)):
        out.append(Conflict("contradicting-stances", a.id, b.id, topic, a.provenance, b.provenance,
                            f"topic {topic!r}: principle {a.id!r} ({a.provenance}) says {a.stance!r} "
                            f"but principle {b.id!r} ({b.provenance}) says {b.stance!r}; the "
                            "strictest applies (override one to settle it)"))
  return out


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


def _apply_profile(base: Constitution, path: pathlib.Path,
                   removed: dict[str, str]) -> tuple[Constitution, list[Conflict]]:
  """Layers a profile onto `base`; universal principles stay exactly as they are.
  `removed` (id -> provenance of the layer that removed it) is updated in place.
  Returns the new constitution and its same-principle conflicts."""
  doc = _read_toml(path)
  _check_fields(f"{path}: profile", doc, ("name", "context", "remove", "override", "principle",
                                          "vocabulary"))
  layer = str(doc.get("name", path.stem))
  if layer in {l.name for l in base.layers}:
    raise ConstitutionError(f"{path}: field 'name': layer {layer!r} is already in the stack "
                            f"({[l.source for l in base.layers if l.name == layer][0]})")
  here = f"{layer} ({path})"
  topics = _vocabulary(path, doc, dict(base.topics))
  principles = {p.id: p for p in base.principles}
  conflicts: list[Conflict] = []

  def editable(pid, field, action):
    if pid not in principles:
      if pid in removed:
        raise ConstitutionError(f"{path}: principle {pid!r}: field {field!r}: cannot {action} it: "
                                f"layer {removed[pid]} removed it earlier in the stack")
      raise ConstitutionError(f"{path}: principle {pid!r}: field {field!r}: cannot {action} a "
                              f"principle the base does not have; known: {sorted(principles)}")
    old = principles[pid]
    if old.tier == "universal":
      done = {"remove": "removed", "override": "overridden"}[action]
      raise ConstitutionError(f"{path}: principle {pid!r}: field {field!r}: universal-tier "
                              f"principles cannot be {done} by a profile ({pid!r} is defined "
                              f"in {old.source})")
    if old.layer != base.layers[0].name:  # an earlier profile layer changed or added it
      conflicts.append(Conflict("same-principle", pid, pid, "", old.provenance, here,
                                f"principle {pid!r}: layer {old.provenance} set it and layer "
                                f"{here} {action}s it; the later layer wins"))

  remove = doc.get("remove", [])
  if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
    raise ConstitutionError(f"{path}: field 'remove' must be a list of principle ids")
  for pid in remove:
    editable(pid, "remove", "remove")
    del principles[pid]
    removed[pid] = here
  for i, table in enumerate(_table_list(path, doc, "override")):
    where = _where(path, "override", i, table)
    _check_fields(where, table, _PRINCIPLE_FIELDS)
    pid = _text(where, table, "id")
    editable(pid, "override", "override")
    merged = {k: v for k, v in dataclasses.asdict(principles[pid]).items()
              if k in _PRINCIPLE_FIELDS and v != ""} | table
    principles[pid] = _principle(path, i, merged, layer, topics, allowed_tiers=("contextual", "style"))
  for i, table in enumerate(_table_list(path, doc, "principle")):
    p = _principle(path, i, table, layer, topics, allowed_tiers=("contextual", "style"))
    if p.id in principles:
      raise ConstitutionError(f"{path}: principle {p.id!r}: field 'id' already exists in the base "
                              f"({principles[p.id].provenance}); use [[override]] to change it")
    principles[p.id] = p
  context = doc.get("context", {})
  if not isinstance(context, dict):
    raise ConstitutionError(f"{path}: field 'context' must be a table")
  resolved = tuple(principles.values())
  _check_no_weakening(resolved)
  merged_context = dict(base.context) | context
  return dataclasses.replace(
      base, name=f"{base.name}+{layer}", principles=resolved,
      context=tuple(sorted(merged_context.items())), topics=tuple(topics.items()),
      layers=base.layers + (Layer(layer, str(path), "profile", tuple(sorted(context.items()))),)
  ), conflicts


def apply_profiles(constitution: Constitution, profiles: Sequence, on_conflict: str = "report"
                   ) -> Constitution:
  """Stacks profile files onto `constitution` in order; conflicts are kept on the result
  (on_conflict="report") or raised naming both sources (on_conflict="error")."""
  if on_conflict not in CONFLICT_MODES:
    raise ConstitutionError(f"on_conflict: {on_conflict!r}; expected one of {CONFLICT_MODES}")
  removed: dict[str, str] = {}
  conflicts: list[Conflict] = []
  for profile in profiles:
    constitution, found = _apply_profile(constitution, pathlib.Path(profile), removed)
    conflicts += found
  conflicts += _stance_conflicts(constitution.principles)
  if conflicts and on_conflict == "error":
    raise ConstitutionError("conflicts between layers:\n  " + "\n  ".join(c.message for c in conflicts))
  return dataclasses.replace(constitution, conflicts=tuple(conflicts))


def load_constitution(path, profile=None, few_shot=None, profiles: Sequence = (),
                      on_conflict: str = "report") -> Constitution:
  """Loads a TOML constitution, its few-shot file, and profiles stacked on top in order
  (`profile`, one file, goes first). `few_shot` overrides the file named in the
  constitution ("" = none)."""
  path = pathlib.Path(path)
  doc = _read_toml(path)
  _check_fields(f"{path}", doc, ("name", "version", "description", "few_shot", "principle",
                                 "vocabulary"))
  topics = _vocabulary(path, doc, {})
  tables = _table_list(path, doc, "principle")
  if not tables:
    raise ConstitutionError(f"{path}: no [[principle]] tables; a constitution needs at least one")
  principles = [_principle(path, i, t, "base", topics) for i, t in enumerate(tables)]
  _check_unique(path, principles)
  _check_no_weakening(principles)
  shot_file = doc.get("few_shot", "") if few_shot is None else few_shot
  examples = ()
  if shot_file:
    shot_path = pathlib.Path(shot_file)
    examples = load_few_shot(shot_path if shot_path.is_absolute() else path.parent / shot_path,
                             principles)
  constitution = Constitution(name=str(doc.get("name", path.stem)), principles=tuple(principles),
                              few_shot=examples, topics=tuple(topics.items()),
                              layers=(Layer("base", str(path), "base"),))
  stack = ([profile] if profile else []) + list(profiles)
  return apply_profiles(constitution, stack, on_conflict)


def profile_path(name: str, constitution_spec: str = "") -> pathlib.Path:
  """A profile by name: `<name>.toml` in the constitution's own profiles/ folder, then in
  this repository's constitutions/profiles/; a value with '/' or '.toml' is a path."""
  if "/" in name or name.endswith(".toml"):
    return pathlib.Path(name)
  folders = []
  if constitution_spec and not constitution_spec.startswith("paper:"):
    folders.append(pathlib.Path(constitution_spec).parent / "profiles")
  folders.append(DEFAULT_DIR / "profiles")
  for folder in folders:
    if (folder / f"{name}.toml").is_file():
      return folder / f"{name}.toml"
  known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.toml")})
  hint = difflib.get_close_matches(name, known, n=1)
  raise ConstitutionError(f"profile {name!r}: no {name}.toml in {[str(f) for f in folders]}"
                          + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {known}"))


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
        tier="universal", tags=("paper",), layer="cai-paper", source=str(cr_path)))
  if not isinstance(shots, list):
    raise ConstitutionError(f"{shot_path}: expected a list of transcript strings")
  examples = tuple(_paper_example(shot_path, i, s) for i, s in enumerate(shots))
  return Constitution(name="cai-paper", principles=tuple(principles), few_shot=examples,
                      layers=(Layer("cai-paper", str(directory), "base"),))


def load(spec: str, profile: str | None = None, few_shot: str | None = None,
         profiles: Sequence = (), on_conflict: str = "report") -> Constitution:
  """A constitution from a TOML path, or from the paper's prompt directory (`paper:<dir>`),
  with profiles stacked in order (`profile` first). An empty spec is this repository's
  constitutions/base.toml."""
  spec = spec or str(DEFAULT_DIR / "base.toml")
  if spec.startswith("paper:"):
    stack = ([profile] if profile else []) + list(profiles)
    return apply_profiles(load_paper_prompts(spec[len("paper:"):]), stack, on_conflict)
  return load_constitution(spec, profile=profile, few_shot=few_shot, profiles=profiles,
                           on_conflict=on_conflict)
