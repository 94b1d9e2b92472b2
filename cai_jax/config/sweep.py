"""Config section: sweeps (one experiment over a grid of settings and seeds; stage `sweep`).

  python -m cai_jax sweep --config experiments/ablations/revisions.py:runlocal

The grid is `field` over the values in `grid`, or `points` when a setting needs several overrides
(each {"label": ..., "x": number (optional), "overrides": {"section.field": value}}; a
point may also replace "sweep.stages", its own stage list). Every setting runs once per
seed in `seeds` (each seed is written into every field of `seed_fields`).

Stages run at three levels, so work that does not depend on the setting is not repeated:
`setup_stages` once for the whole sweep (the evaluator), `shared_stages` once per seed
(e.g. sl-data with 4 rounds for a "which round SFT trains on" grid) and `stages` per
point. A point may not override a field that a setup or shared stage reads (checked
here), or the sharing would be wrong. Outcomes are names in cai_jax/sweep.py OUTCOMES.
"""

from __future__ import annotations

import difflib

from cai_jax.config.core import (ConfigDict, apply_overrides, base_config, get_field, section,
                                 validator)

# Which stages read each config section: a point's override of a field in a section that a
# setup or shared stage reads would silently not reach it. Sections not listed (model,
# sampler, mesh, the top-level fields, ...) are read by every stage.
SECTION_READERS = {
    "sl_data": {"sl-data"}, "sft": {"sft"}, "feedback": {"feedback"}, "rm": {"rm"},
    "ppo": {"ppo"}, "dpo": {"dpo"}, "eval": {"eval-hhh", "eval-mc"},
    "refusal": {"eval-refusal", "eval-safety", "sl-data", "audit"}, "safety": {"eval-safety"},
    "harmless": {"harmless-rm", "eval-harmless", "eval-helpful", "sl-data"},
    "drift": {"eval-drift"}, "constitution": {"sl-data", "feedback", "audit"},
    "audit": {"audit"}, "checkpoint": {"sft", "ppo", "dpo"}, "pipeline": set(), "sweep": set(),
}


@section("sweep")
def _sweep() -> ConfigDict:
  return ConfigDict(dict(
      name="sweep",  # the plot is <workdir>/sweep/<name>.png
      field="",  # the ablated field, dotted, e.g. "constitution.n_principles"
      grid=(),  # its values: one setting each
      points=(),  # or settings with several overrides (see the module docstring)
      seeds=(0,),
      seed_fields="seed,sft.seed,rm.seed,dpo.seed",  # fields set to each seed
      setup_stages="",  # once, in <workdir>/sweep/setup (e.g. "harmless-rm")
      shared_stages="",  # once per seed, in <workdir>/sweep/shared/seed_<s> (e.g. "sl-data,sft")
      stages="",  # each point, in <workdir>/sweep/points/<label>_seed<s>; "eval-helpful" =
      # eval-harmless on helpful_prompts (the helpfulness outcome), in the point's helpful/
      outcomes="harmlessness",  # comma-separated names from cai_jax/sweep.py OUTCOMES
      helpful_prompts="helpful",  # eval-helpful: prompt spec (data/prompts.py)
      # base: eval-harmless / eval-helpful also answer with config.model at every point (the
      # harmlessness_gain and harmless_win_rate outcomes); self: the point's policy is its own
      # baseline, which halves their sampling and leaves the absolute scores as they are
      baseline="base",
      x_label="",  # the plot's x axis; "" = field (or "setting")
      title="",  # "" = name
      x_scale="linear",  # linear | log (base 2; numeric settings only)
      error_bars="sem",  # sem (std / sqrt(n)) | std (ddof 1), over seeds
      on_error="continue",  # continue (record a failed point, run the others) | raise
      only="",  # comma-separated setting labels: run only these now ("" = all)
      max_points=-1,  # run at most this many points now (-1 = all); rerun for the rest
      # A finished folder's checkpoints are deleted (only a half-done job resumes from them);
      # False also deletes each finished point's trained weights (hf/, model/: GBs per point
      # for a real model); the shared and setup stages' weights always stay.
      keep_models=False,
      compile_cache=True,  # JAX's persistent compilation cache in <workdir>/sweep/jax_cache
      # while the sweep runs (points compile the same programs); unused if one is set already
  ))


def names(text: str) -> list[str]:
  """"a, b" -> ["a", "b"]."""
  return [s.strip() for s in text.split(",") if s.strip()]


def point_stages(c: ConfigDict, overrides) -> list[str]:
  """The stage list of a point: its own "sweep.stages" override, else sweep.stages."""
  return names(dict(overrides).get("sweep.stages", c.stages))


def _unknown(field: str, kind: str, name: str, known) -> ValueError:
  hint = difflib.get_close_matches(name, known, n=1)
  return ValueError(f"{field}: unknown {kind} {name!r}" + (
      f"; did you mean {hint[0]!r}?" if hint else f"; expected some of {sorted(known)}"))


def _check_stage_names(field: str, stages: list[str]) -> None:
  from cai_jax import layout, sweep
  known = (set(layout.STAGE_DIRS) - {"sweep"}) | {sweep.HELPFUL}
  for s in stages:
    if s not in known:
      raise _unknown(field, "stage", s, known)


def _check_overrides(c: ConfigDict, setting, upstream: set[str], where: str) -> None:
  """The point's fields exist with the right types, and no setup/shared stage reads them."""
  fixed = {"workdir", *names(c.seed_fields)}  # the sweep sets these itself
  probe = base_config()
  for field, value in setting.overrides:
    if field in fixed or (field.startswith("sweep.") and field != "sweep.stages"):
      raise ValueError(f"{where}: cannot override {field!r} (the sweep sets it)")
    try:
      apply_overrides(probe, {field: value})
    except (ValueError, TypeError, AttributeError, KeyError) as e:
      raise ValueError(f"{where}: {e}") from None
    readers = SECTION_READERS.get(field.split(".")[0])
    clash = sorted(upstream if readers is None else upstream & readers)
    if clash:
      raise ValueError(f"{where}: overrides {field}, which the setup/shared stage(s) {clash} read "
                       "once for every point; run them per point (sweep.stages) instead")


def _check_scalars(c: ConfigDict) -> None:
  from cai_jax import sweep
  for choice, allowed in (("x_scale", ("linear", "log")), ("error_bars", ("sem", "std")),
                          ("on_error", ("continue", "raise")), ("baseline", ("base", "self"))):
    if c[choice] not in allowed:
      raise ValueError(f"sweep.{choice}: {c[choice]!r}; expected one of {allowed}")
  if not c.name or sweep.safe_name(c.name) != c.name:
    raise ValueError(f"sweep.name: {c.name!r}; expected a file-safe name (letters, digits, .=+-)")
  if (not c.seeds or len(set(c.seeds)) != len(c.seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in c.seeds)):
    raise ValueError(f"sweep.seeds: {c.seeds!r}; expected distinct integers, e.g. (0, 1)")
  if c.max_points < -1:
    raise ValueError(f"sweep.max_points: expected -1 (all) or >= 0, got {c.max_points}")
  base = base_config()
  for field in names(c.seed_fields):
    value = get_field(base, field)
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError(f"sweep.seed_fields: {field!r} is not an integer config field")


def _check_outcomes(c: ConfigDict, stages_run: set[str]) -> None:
  from cai_jax import sweep
  for name in names(c.outcomes):
    if name not in sweep.OUTCOMES:
      raise _unknown("sweep.outcomes", "outcome", name, sweep.OUTCOMES)
    if c.baseline == "self" and name in ("harmlessness_gain", "harmless_win_rate"):
      raise ValueError(f"sweep.outcomes: {name!r} compares with the base model's answers, which "
                       "sweep.baseline='self' does not sample; use baseline='base'")
    stage = sweep.OUTCOMES[name].stage
    if stage not in stages_run:
      raise ValueError(f"sweep.outcomes: {name!r} is read from stage {stage}'s summary, which "
                       "no setup, shared or point stage list runs")


@validator("sweep")
def _validate_sweep(c: ConfigDict) -> None:
  from cai_jax import sweep

  settings = sweep.grid_settings(c.field, c.grid, c.points)
  _check_scalars(c)
  setup, shared = names(c.setup_stages), names(c.shared_stages)
  for field in ("setup_stages", "shared_stages", "stages"):
    _check_stage_names(f"sweep.{field}", names(c[field]))
  stages_run = set(setup) | set(shared)
  for i, setting in enumerate(settings):
    where = f"sweep.points[{i}] ({setting.label})" if c.points else f"sweep.grid[{i}]"
    _check_overrides(c, setting, set(setup) | set(shared), where)
    own = point_stages(c, setting.overrides)
    _check_stage_names(f"{where}: sweep.stages", own)
    stages_run |= set(own)
    folders = [sweep.stage_folder(s) for s in (*setup, *shared, *own)]
    dup = next((f for f in folders if folders.count(f) > 1), None)
    if dup is not None:
      raise ValueError(f"{where}: two of the setup, shared and point stages write the folder "
                       f"{dup!r}; a stage may run at one level only")
  if settings:
    _check_outcomes(c, stages_run)
  unknown = set(names(c.only)) - {s.label for s in settings}
  if unknown:
    raise ValueError(f"sweep.only: no setting labelled {sorted(unknown)}; labels: "
                     f"{[s.label for s in settings]}")
