"""Config sections: the constitution every stage draws principles from, and the self-audit."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator

TIERS = ("universal", "contextual", "style")
AUDIT_FAMILIES = ("direct", "roleplay", "injection", "multiturn", "language")
AUDIT_LANGUAGES = ("fr", "es", "de")


@section("constitution")
def _constitution() -> ConfigDict:
  # Read by sl-data, feedback, audit and the `constitution` command (stages/constitution.py);
  # sl_data.constitution/profile and feedback.constitution/profile override path/profiles per stage.
  return ConfigDict(dict(
      path="constitutions/base.toml",  # TOML path, or "paper:<dir>" for the paper's JSON prompts
      profiles="",  # comma list stacked in order: names in constitutions/profiles/ or .toml paths
      on_conflict="report",  # report | error: two layers changing one principle, contradicting stances
      sampling="uniform",  # uniform | tiered (draw a principle's tier by tier_weights first)
      tier_weights="universal=1,contextual=1,style=1",  # tiered: relative weight per tier (unnamed: 1)
      n_principles=-1,  # keep a subset of this many principles (ablation); -1 = all
      subset_seed=0,  # which subset n_principles keeps (fixed across a sweep's points)
  ))


def parse_tier_weights(text: str) -> dict[str, float]:
  """"universal=2,style=0.5" -> {"universal": 2.0, "style": 0.5}; ValueError names the field."""
  weights = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, value = part.partition("=")
    name = name.strip()
    if not sep or name not in TIERS:
      raise ValueError(f"constitution.tier_weights: {part!r}; expected tier=weight with tier in {TIERS}")
    try:
      weights[name] = float(value)
    except ValueError:
      raise ValueError(f"constitution.tier_weights: {part!r}: weight is not a number") from None
    if weights[name] < 0:
      raise ValueError(f"constitution.tier_weights: {part!r}: weight must be >= 0")
  if not any(weights.get(t, 1.0) for t in TIERS):  # tiers not named weigh 1
    raise ValueError("constitution.tier_weights: every weight is 0; no principle could be drawn")
  return weights


def comma_list(text: str) -> list[str]:
  """"a, b,,c" -> ["a", "b", "c"]."""
  return [part.strip() for part in text.split(",") if part.strip()]


@validator("constitution")
def _validate_constitution(c: ConfigDict) -> None:
  if not c.path.strip():
    raise ValueError("constitution.path: empty; expected a TOML path or paper:<dir>")
  if c.on_conflict not in ("report", "error"):
    raise ValueError(f"constitution.on_conflict: {c.on_conflict!r}; expected report or error")
  if c.sampling not in ("uniform", "tiered"):
    raise ValueError(f"constitution.sampling: {c.sampling!r}; expected uniform or tiered")
  parse_tier_weights(c.tier_weights)
  if c.n_principles == 0 or c.n_principles < -1:
    raise ValueError(f"constitution.n_principles: expected -1 (all) or a positive count, got {c.n_principles}")


@section("audit")
def _audit() -> ConfigDict:
  # Stage `audit` (stages/audit.py -> evals/audit*.py): the self-audit battery of the resolved
  # constitution (constitution section): attack families x principles, universal-tier override
  # routes, contextual overrides' honour rate. Writes <workdir>/audit/.
  return ConfigDict(dict(
      models="",  # comma list of model sources to audit on the same battery; "" = config.model
      families=",".join(AUDIT_FAMILIES),  # attack families to build (comma list)
      items_per_family=100,  # per family; every principle gets at least one item per family
      route_items=3,  # requests per universal principle per override route
      honour_items=4,  # requests per topic a profile changed the stance of
      model_scenarios=2,  # requests per principle written by config.model (few-shot); 0 = none
      languages=",".join(AUDIT_LANGUAGES),  # language family: our translations into these
      seed=0,  # battery draws (which scenarios, personas, documents); sampling uses config.seed
      seed_file="",  # red-team prompts to seed the battery: CSV/JSONL with prompt|behavior|goal
      seed_limit=-1,  # first N seed prompts; -1 = all
      seed_principle="avoid-harm",  # principle a seed prompt tests when its category maps to none
      battery="",  # reuse this battery.jsonl (same items across models/profiles); "" = build one
      max_new_tokens=48,  # per answer (and per earlier turn of a multi-turn item)
      judge=False,  # also ask config.model whether each answer breaks its principle (A/B log-probs)
      compare="",  # "A,B": compare two finished audits (dirs or items.jsonl[::model]) instead
  ))


@validator("audit")
def _validate_audit(c: ConfigDict) -> None:
  families = comma_list(c.families)
  bad = [f for f in families if f not in AUDIT_FAMILIES]
  if not families or bad:
    raise ValueError(f"audit.families: {c.families!r}; expected a comma list of {AUDIT_FAMILIES}")
  languages = comma_list(c.languages)
  bad = [lang for lang in languages if lang not in AUDIT_LANGUAGES]
  if bad or ("language" in families and not languages):
    raise ValueError(f"audit.languages: {c.languages!r}; expected a comma list of {AUDIT_LANGUAGES}")
  if c.items_per_family < 1:
    raise ValueError(f"audit.items_per_family: expected >= 1, got {c.items_per_family}")
  for field in ("route_items", "honour_items", "model_scenarios"):
    if c[field] < 0:
      raise ValueError(f"audit.{field}: expected >= 0, got {c[field]}")
  if c.seed_limit < -1:
    raise ValueError(f"audit.seed_limit: expected -1 (all) or >= 0, got {c.seed_limit}")
  if c.max_new_tokens < 1:
    raise ValueError(f"audit.max_new_tokens: expected >= 1, got {c.max_new_tokens}")
  if c.compare and len(comma_list(c.compare)) != 2:
    raise ValueError(f"audit.compare: {c.compare!r}; expected two audits, \"A,B\" (audit dirs or "
                     "items.jsonl files, optionally ::<model> to pick one model)")
