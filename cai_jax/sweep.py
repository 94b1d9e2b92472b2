"""Sweeps: one experiment over a grid of settings and seeds (the library behind stage `sweep`).

A grid is a list of settings (a label, an optional number to plot it at, and the config
overrides that make it); each setting runs once per seed, as a point. Work that does
not depend on the setting is shared instead of repeated. The tree under
<workdir>/sweep/:

  setup/                     setup stages, run once for the whole sweep (e.g. harmless-rm,
                             the evaluator every point is measured with)
  shared/seed_<s>/           shared stages, run once per seed (e.g. sl-data with 4 rounds,
                             which every "train on round r" point reads)
  points/<label>_seed<s>/    each point's own stages, in a workdir of its own; the setup and
                             shared stages' folders appear in it as relative symlinks, so each
                             stage finds its inputs through the run layout as in a pipeline run
  <any of these>/done.json   written last: a folder that has it is finished and skipped on a
                             rerun; one without it reruns its stages, which resume themselves
  results.jsonl results.md   one row per point (setting, seed, outcomes) and the means over seeds
  <name>.png                 each outcome vs the ablated setting, mean and error bar over seeds

Outcomes are read from the stages' own summaries (OUTCOMES). This module knows nothing of
the config: stages/sweep.py turns config.sweep into `grid_settings` and a `Runner`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cai_jax import layout as layout_lib
from cai_jax import report

log = logging.getLogger(__name__)

DONE = "done.json"
# Pseudo-stage "eval-helpful": eval-harmless on helpful prompts, run in <point>/helpful/.
HELPFUL = "eval-helpful"
HELPFUL_DIR = "helpful"


# ---------------------------------------------------------------------------- the grid
@dataclasses.dataclass(frozen=True)
class Setting:
  """One value of the ablated quantity: its label, where it is plotted (None: categorical,
  by position) and the config overrides ("section.field" -> value) that make it."""

  label: str
  x: float | None
  overrides: tuple[tuple[str, object], ...]


@dataclasses.dataclass(frozen=True)
class Point:
  """One setting run with one seed; `index` is the setting's position in the grid."""

  setting: Setting
  seed: int
  index: int

  @property
  def name(self) -> str:
    """Folder name under points/: the label made file-safe, and the seed."""
    return f"{safe_name(self.setting.label)}_seed{self.seed}"


def safe_name(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9.=+-]+", "_", label).strip("_") or "point"


def _number(value) -> float | None:
  """A plottable number (bools are categories, not numbers)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def grid_settings(field: str, values: Sequence, points: Sequence[Mapping]) -> list[Setting]:
  """The grid as settings: `field` over `values` (config sweep.grid; label str(value), x the
  value when it is a number), or `points` ({"label", "x" (optional), "overrides"} each).
  Exactly one form, or neither ([] = no grid). ValueError names the sweep field at fault."""
  if (field or values) and points:
    raise ValueError("sweep.points: give either sweep.field + sweep.grid or sweep.points, not both")
  if field or values:
    if not field or not values:
      raise ValueError(f"sweep.field / sweep.grid: need both; got field {field!r} and "
                       f"{len(values)} values")
    settings = [Setting(str(v), _number(v), ((field, v),)) for v in values]
  else:
    settings = [_point_setting(i, p) for i, p in enumerate(points)]
  names = [safe_name(s.label) for s in settings]
  dup = next((n for n in names if names.count(n) > 1), None)
  if dup is not None:
    raise ValueError(f"sweep: two settings share the folder name {dup!r}; "
                     "give them distinct labels")
  if any(s.x is None for s in settings):  # one categorical setting makes the axis categorical
    settings = [dataclasses.replace(s, x=None) for s in settings]
  return settings


def _point_setting(i: int, point) -> Setting:
  """sweep.points[i] as a Setting, or a ValueError saying what is wrong with it."""
  where = f"sweep.points[{i}]"
  if not isinstance(point, Mapping) or set(point) - {"label", "x", "overrides"}:
    raise ValueError(f"{where}: expected a dict with keys label, x (optional), overrides; "
                     f"got {point!r}")
  label, overrides, x = point.get("label"), point.get("overrides", {}), point.get("x")
  if not isinstance(label, str) or not label.strip():
    raise ValueError(f"{where}: 'label' must be a non-empty string, got {label!r}")
  if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
    raise ValueError(f"{where} ({label}): 'overrides' must map 'section.field' to a value")
  if x is not None and _number(x) is None:
    raise ValueError(f"{where} ({label}): 'x' must be a number (or left out), got {x!r}")
  return Setting(label, _number(x), tuple(overrides.items()))


def expand(settings: Sequence[Setting], seeds: Sequence[int]) -> list[Point]:
  """Every setting once per seed, seed-major: each seed's whole curve is done before the next."""
  return [Point(s, int(seed), i) for seed in seeds for i, s in enumerate(settings)]


# ---------------------------------------------------------------------------- outcomes
def _last_model(summary: Mapping) -> Mapping:
  """eval-harmless / eval-safety list the measured models last (the most trained one)."""
  return summary["models"][-1]


def _round_harmless(summary: Mapping, round_: float | None) -> float | None:
  """sl-data's per-round table: the evaluator's mean score of round `round_`'s revisions
  (None: the last round); None when the sweep's x is not a round number that was run."""
  rows = summary["quality"]["red_team"]
  if round_ is None:
    return rows[-1]["harmless"]
  return next((r["harmless"] for r in rows if r["round"] == round_), None)


def _asr(summary: Mapping) -> float | None:
  """The documented slot: "asr", a number or {"rate": ...}. Else (stage audit's audit.json as
  it stands): the last audited model's attacks pooled over families, sum(count) / sum(n)."""
  if "asr" in summary:
    asr = summary["asr"]
    return asr.get("rate") if isinstance(asr, Mapping) else asr
  family = list(summary["models"].values())[-1]["family"].values()
  n = sum(f["asr"]["n"] for f in family)
  return sum(f["asr"]["count"] for f in family) / n if n else None


@dataclasses.dataclass(frozen=True)
class Outcome:
  """A number read from a stage's summary file in a point's workdir."""

  name: str
  label: str  # the plot's y axis
  stage: str  # the stage that writes it (a sweep must run it)
  files: tuple[str, ...]  # file names in that stage's folder; the first one present is read
  read: Callable[[Mapping, Point], float | None]

  def path(self, workdir: pathlib.Path) -> pathlib.Path:
    """The first of `files` that exists (else the first) in the stage's folder of `workdir`."""
    if self.stage == HELPFUL:
      folder = layout_lib.RunLayout(workdir / HELPFUL_DIR).stage_dir("eval-harmless")
    else:
      folder = layout_lib.RunLayout(workdir).stage_dir(self.stage)
    return next((folder / f for f in self.files if (folder / f).is_file()), folder / self.files[0])

  def value(self, workdir: pathlib.Path, point: Point) -> float | None:
    """The outcome of the point in `workdir`; None when its file or entry is absent."""
    path = self.path(workdir)
    if not path.is_file():
      return None
    try:
      got = self.read(json.loads(path.read_text()), point)
    except (KeyError, IndexError, TypeError):
      return None
    return None if got is None else float(got)


_HARMLESS, _SAFETY, _SUMMARY = ("harmless.json",), ("safety.json",), ("summary.json",)
OUTCOMES: dict[str, Outcome] = {o.name: o for o in (
    Outcome("harmlessness", "evaluator score of the policy's answers", "eval-harmless", _HARMLESS,
            lambda s, p: _last_model(s)["mean_score"]),
    Outcome("harmlessness_gain", "harmlessness - base model's", "eval-harmless", _HARMLESS,
            lambda s, p: _last_model(s)["mean_difference"]),
    Outcome("harmless_win_rate", "win rate vs base model", "eval-harmless", _HARMLESS,
            lambda s, p: _last_model(s)["win_rate"]),
    Outcome("helpfulness", "evaluator score, helpful prompts", HELPFUL, _HARMLESS,
            lambda s, p: _last_model(s)["mean_score"]),
    Outcome("orr", "over-refusal rate (safe prompts)", "eval-safety", _SAFETY,
            lambda s, p: _last_model(s)["orr"]["rate"]),
    Outcome("ucr", "unsafe-compliance rate", "eval-safety", _SAFETY,
            lambda s, p: _last_model(s)["ucr"]["rate"]),
    # The paper's Fig. 5 form: the evaluator's score of the revision texts themselves.
    Outcome("sl_harmlessness", "evaluator score of the last revisions", "sl-data", _SUMMARY,
            lambda s, p: _round_harmless(s, None)),
    Outcome("round_harmlessness", "evaluator score of round-x revisions", "sl-data", _SUMMARY,
            lambda s, p: None if p.setting.x is None else _round_harmless(s, p.setting.x)),
    Outcome("rm_accuracy", "reward model held-out accuracy (AI labels)", "rm", _SUMMARY,
            lambda s, p: s["ai_accuracy"]),
    # Stage `audit`: audit/summary.json's "asr" (a number in [0, 1] or {"rate": ...}) when it
    # writes one; else audit.json's per-family rates of the last audited model, pooled.
    Outcome("asr", "attack success rate (self-audit)", "audit", ("summary.json", "audit.json"),
            lambda s, p: _asr(s)),
)}


def read_outcomes(workdir: pathlib.Path, point: Point,
                  names: Sequence[str]) -> dict[str, float | None]:
  """{outcome name: its value at the point in `workdir`, None when absent}."""
  return {n: OUTCOMES[n].value(workdir, point) for n in names}


# ---------------------------------------------------------------------------- running
@dataclasses.dataclass(frozen=True)
class Job:
  """What the runner is asked to do: run the `kind` stages ("setup", "shared" or "point") in
  `workdir`, for `seed` (None for setup) and `point` (for kind "point")."""

  kind: str
  workdir: pathlib.Path
  seed: int | None = None
  point: Point | None = None


Runner = Callable[[Job], None]


@dataclasses.dataclass(frozen=True)
class PointResult:
  point: Point
  status: str  # done (ran now) | finished (before this run) | failed | pending (not run yet)
  seconds: float
  outcomes: Mapping[str, float | None]
  error: str = ""

  def row(self) -> dict:
    """The results.jsonl record."""
    s = self.point.setting
    return dict(label=s.label, x=s.x, seed=self.point.seed, status=self.status,
                seconds=round(self.seconds, 1), **self.outcomes,
                **({"error": self.error} if self.error else {}))


@dataclasses.dataclass(frozen=True)
class SweepDirs:
  """The folders of one sweep (see the module docstring)."""

  root: pathlib.Path

  @property
  def setup(self) -> pathlib.Path:
    return self.root / "setup"

  def shared(self, seed: int) -> pathlib.Path:
    return self.root / "shared" / f"seed_{seed}"

  def point(self, point: Point) -> pathlib.Path:
    return self.root / "points" / point.name


def stage_folder(stage: str) -> str:
  return HELPFUL_DIR if stage == HELPFUL else layout_lib.STAGE_DIRS[stage]


def link_stages(source: pathlib.Path, target: pathlib.Path, stages: Sequence[str]) -> None:
  """Relative symlinks target/<folder> -> source/<folder> for each stage's folder that exists;
  a real folder already at a link's place is an error (that stage must not run twice)."""
  target.mkdir(parents=True, exist_ok=True)
  for folder in dict.fromkeys(stage_folder(s) for s in stages):
    src, dst = source / folder, target / folder
    if not src.exists():
      continue
    if dst.is_symlink():
      dst.unlink()
    elif dst.exists():
      raise FileExistsError(f"{dst} is a folder of its own; it should link to {src}")
    dst.symlink_to(os.path.relpath(src, target), target_is_directory=True)


def is_done(workdir: pathlib.Path) -> bool:
  return (workdir / DONE).is_file()


def prune(workdir: pathlib.Path, models: bool) -> list[pathlib.Path]:
  """Deletes what a finished job no longer needs: its stages' checkpoints/ (kept only to
  resume), and with `models` their exported weights (hf/, model/) too. Linked folders are
  another job's and are left alone. Returns the deleted paths."""
  gone = []
  for folder in workdir.iterdir():
    if folder.is_symlink() or not folder.is_dir():
      continue
    for name in ("checkpoints",) + (("hf", "model") if models else ()):
      if (folder / name).is_dir() and not (folder / name).is_symlink():
        shutil.rmtree(folder / name)
        gone.append(folder / name)
  return gone


def run_once(workdir: pathlib.Path, job: Job, runner: Runner, keep_models: bool = True) -> float:
  """Runs `job` unless `workdir` is finished; writes done.json last, then prunes the finished
  folder (checkpoints; a point's weights too unless `keep_models`). Seconds it took (0 if
  it was done before)."""
  seconds = 0.0
  if not is_done(workdir):
    start = time.time()
    runner(job)
    seconds = time.time() - start
    done = dict(kind=job.kind, seed=job.seed, seconds=round(seconds, 1),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    (workdir / DONE).write_text(json.dumps(done))
  for path in prune(workdir, models=job.kind == "point" and not keep_models):
    log.info("sweep: %s is finished; deleted %s", workdir.name, path)
  return seconds


def run_sweep(dirs: SweepDirs, points: Sequence[Point], runner: Runner, *,
              setup_stages: Sequence[str] = (), shared_stages: Sequence[str] = (),
              outcomes: Sequence[str] = (), on_error: str = "continue",
              only: Sequence[str] = (), max_points: int = -1,
              keep_models: bool = True) -> list[PointResult]:
  """Runs setup once, the shared stages once per seed (before that seed's first point to run)
  and the unfinished points; finished ones are read back. on_error="continue" records a
  failed point and goes on; "raise" stops at the first failure. `only` (setting labels) and
  `max_points` (-1 = no limit) leave the other unfinished points "pending" for a later run,
  so a long sweep can be run in time-boxed pieces. Finished folders lose their checkpoints
  (and, unless `keep_models`, a point's trained weights): see `prune`."""
  from tqdm import tqdm

  unfinished = [p for p in points if not is_done(dirs.point(p))]
  chosen = [p.name for p in unfinished if not only or p.setting.label in only]
  todo = set(chosen if max_points < 0 else chosen[:max_points])
  log.info("sweep: %d points (%d finished before, %d to run now, %d left pending) in %s",
           len(points), len(points) - len(unfinished), len(todo), len(unfinished) - len(todo),
           dirs.root)
  if todo and setup_stages:
    dirs.setup.mkdir(parents=True, exist_ok=True)
    run_once(dirs.setup, Job("setup", dirs.setup), runner)
  results: dict[str, PointResult] = {}
  start, ran = time.time(), 0
  with tqdm(total=len(todo), unit="point", desc="sweep") as bar:
    for point in points:
      workdir = dirs.point(point)
      if point.name not in todo:
        finished = is_done(workdir)
        if finished:  # a sweep from before pruning, or one run with keep_models
          prune(workdir, models=not keep_models)
        seconds = json.loads((workdir / DONE).read_text()).get("seconds", 0.0) if finished else 0.0
        results[point.name] = PointResult(
            point, "finished" if finished else "pending", seconds,
            read_outcomes(workdir, point, outcomes) if finished else {n: None for n in outcomes})
        continue
      t0 = time.time()
      try:
        if shared_stages:
          shared = dirs.shared(point.seed)
          link_stages(dirs.setup, shared, setup_stages)
          run_once(shared, Job("shared", shared, point.seed), runner)
        link_stages(dirs.setup, workdir, setup_stages)
        if shared_stages:
          link_stages(dirs.shared(point.seed), workdir, shared_stages)
        run_once(workdir, Job("point", workdir, point.seed, point), runner, keep_models)
      except Exception as e:  # noqa: BLE001  (one broken point should not lose the others)
        if on_error == "raise":
          raise
        log.exception("sweep: point %s failed", point.name)
        results[point.name] = PointResult(point, "failed", time.time() - t0,
                                          {n: None for n in outcomes},
                                          error=f"{type(e).__name__}: {e}")
      else:
        results[point.name] = PointResult(point, "done", time.time() - t0,
                                     read_outcomes(workdir, point, outcomes))
      ran += 1
      bar.update(1)
      eta = (time.time() - start) / ran * (len(todo) - ran)
      result = results[point.name]
      got = ", ".join(f"{k} {_fmt(v)}" for k, v in result.outcomes.items())
      log.info("sweep: [%d/%d] %s seed %d %s in %.0f s (%s); ETA %.0f s", ran, len(todo),
               point.setting.label, point.seed, result.status, result.seconds,
               got or "no outcomes", eta)
  return [results[p.name] for p in points]


def _fmt(v) -> str:
  return "-" if v is None else f"{v:.4g}"


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class Aggregate:
  """One outcome of one setting over its seeds: mean, sample std (ddof 1) and std / sqrt(n)."""

  label: str
  x: float | None
  index: int
  outcome: str
  values: tuple[float, ...]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    return float(np.mean(self.values)) if self.values else math.nan

  @property
  def std(self) -> float:
    return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

  @property
  def sem(self) -> float:
    return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

  def row(self) -> dict:
    nan = lambda v: None if math.isnan(v) else v  # noqa: E731  (JSON has no NaN)
    return dict(label=self.label, x=self.x, outcome=self.outcome, n=self.n, mean=nan(self.mean),
                std=nan(self.std), sem=nan(self.sem), values=list(self.values))


def aggregate(results: Sequence[PointResult], outcomes: Sequence[str]) -> list[Aggregate]:
  """Per outcome, per setting (grid order): the values over the seeds that produced one."""
  by_setting: dict[int, list[PointResult]] = {}
  for r in results:
    by_setting.setdefault(r.point.index, []).append(r)
  out = []
  for outcome in outcomes:
    for index in sorted(by_setting):
      rs = by_setting[index]
      values = tuple(float(r.outcomes[outcome]) for r in rs if r.outcomes.get(outcome) is not None)
      s = rs[0].point.setting
      out.append(Aggregate(s.label, s.x, index, outcome, values))
  return out


def write_results(dirs: SweepDirs, results: Sequence[PointResult], aggregates: Sequence[Aggregate],
                  outcomes: Sequence[str], *, title: str, error_bars: str = "sem",
                  notes: Sequence[str] = ()) -> tuple[pathlib.Path, pathlib.Path]:
  """results.jsonl (a row per point) and results.md (those rows, then mean +- error bar over
  seeds per setting and outcome, then failed points); returns both paths."""
  dirs.root.mkdir(parents=True, exist_ok=True)
  jsonl, md = dirs.root / "results.jsonl", dirs.root / "results.md"
  with open(jsonl, "w") as f:
    for r in results:
      f.write(json.dumps(r.row()) + "\n")
  lines = [f"# {title}", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
  lines += ["## Points", ""] + report.table_lines(
      [{k: v for k, v in r.row().items() if k != "error"} for r in results]) + [""]
  lines += [f"## Mean ± {error_bars} over seeds", ""]
  rows: dict[int, dict] = {}
  for a in aggregates:
    row = rows.setdefault(a.index, {"label": a.label, "x": "" if a.x is None else a.x})
    err = getattr(a, error_bars)
    row[a.outcome] = ("-" if not a.n else f"{a.mean:.4g}" if math.isnan(err)
                      else f"{a.mean:.4g} ± {err:.2g}") + f" (n={a.n})"
  lines += report.table_lines(list(rows.values())) + [""]
  failed = [r for r in results if r.status == "failed"]
  if failed:
    lines += ["## Failed points", ""] + [f"- {r.point.name}: {r.error}" for r in failed] + [""]
  md.write_text("\n".join(lines))
  return jsonl, md
