"""Stage `constitution`: prints the resolved constitution (tiers, stances, provenance, conflicts).

  python -m cai_jax constitution --config experiments/tiny.py \
      --config.constitution.profiles=eu_healthcare,children_education

Profiles stack in the order given; a name is constitutions/profiles/<name>.toml (or
a .toml path). A profile that removes, overrides or weakens a universal principle
is refused here as everywhere (the error names both files); other conflicts are
listed. `from_config` is how every stage (sl-data, feedback, audit) gets its
constitution from the `constitution` section, with the stage's own overrides.
"""

from __future__ import annotations

from cai_jax import constitution as constitution_lib
from cai_jax.config.constitution import comma_list, parse_tier_weights
from cai_jax.stages import common


def profile_paths(spec: str, profiles: str) -> list[str]:
  """A comma list of profile names/paths -> their files ("none" = no profile)."""
  if profiles.strip() == "none":
    return []
  return [str(constitution_lib.profile_path(common.repo_path(name), spec))
          for name in comma_list(profiles)]


def from_config(config, stage: str | None = None, few_shot: str | None = None,
                profiles: str | None = None) -> constitution_lib.Constitution:
  """The resolved constitution: constitution.path + profiles (or `stage`'s own
  `constitution` / `profile` fields when set, or `profiles` when given), then the
  n_principles subset and the draw weights of the constitution section."""
  c = config.constitution
  spec, stack = c.path, c.profiles
  if stage is not None:
    spec = config[stage].constitution or spec
    stack = config[stage].profile or stack
  stack = stack if profiles is None else profiles
  spec = common.repo_path(spec)
  constitution = constitution_lib.load(spec, few_shot=few_shot, profiles=profile_paths(spec, stack),
                                       on_conflict=c.on_conflict)
  constitution = constitution.subset(c.n_principles, c.subset_seed)
  weights = parse_tier_weights(c.tier_weights) if c.sampling == "tiered" else None
  return constitution.with_tier_weights(weights)


def describe(constitution: constitution_lib.Constitution) -> dict:
  """JSON-able provenance summary for stage summaries and reports."""
  return dict(name=constitution.name, n_principles=len(constitution.principles),
              layers=[dict(name=l.name, source=l.source, kind=l.kind) for l in constitution.layers],
              tiers={t: len(constitution.tier(t)) for t in constitution_lib.TIERS},
              sampling="tiered" if constitution.tier_weights else "uniform",
              tier_weights=dict(constitution.tier_weights),
              conflicts=[dict(kind=x.kind, first=x.first, second=x.second, message=x.message)
                         for x in constitution.conflicts])


def table(constitution: constitution_lib.Constitution) -> str:
  """One line per principle: id, tier, stance on topics, draw probability, layer, file."""
  probs = constitution.draw_probabilities()
  rows = [("id", "tier", "stance: topics", "P(draw)", "layer", "source")]
  rows += [(p.id, p.tier, f"{p.stance}: {', '.join(p.topics)}" if p.stance else "-",
            f"{q:.3f}", p.layer, p.source) for p, q in zip(constitution.principles, probs)]
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5]
                   for r in rows)


def run(config) -> dict:
  constitution = from_config(config)
  print(f"constitution {constitution.name}: {len(constitution.principles)} principles, layers "
        + " -> ".join(f"{l.name} ({l.source})" for l in constitution.layers))
  if constitution.context:
    print("context: " + "; ".join(f"{k}={v}" for k, v in constitution.context))
  print(table(constitution))
  for p in constitution.principles:
    print(f"  {p.id}: {p.statement}")
  for conflict in constitution.conflicts:
    print(f"CONFLICT ({conflict.kind}): {conflict.message}")
  return common.finish("constitution", describe(constitution))
