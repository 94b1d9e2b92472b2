"""Stage `sweep`: one experiment over a grid of settings and seeds, then a table and a plot.

  python -m cai_jax sweep --config experiments/ablations/revisions.py:runlocal

config.sweep names the grid, the seeds, the stages at each level (setup once, shared
once per seed, the rest per point) and the outcomes (config/sweep.py). Each point runs
in <workdir>/sweep/points/<label>_seed<s>/ with a copy of the config: the seed, the
point's overrides and its workdir applied, then validated again. The evaluation stages
measure the point's final policy (dpo, else ppo, else sft, else the base model), against
the base model's answers (sweep.baseline="base") or alone ("self"). A rerun skips
finished points (delete a point's folder to redo it after changing the config) and
resumes the half-done one through the stages' own resume. Progress: a bar over the
points to run, and a log line per point with its outcomes, time and the ETA. Writes
<workdir>/sweep/results.jsonl, results.md, <name>.png and summary.json (the tree and the
library: cai_jax/sweep.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import pathlib
import time

from cai_jax import config as config_lib
from cai_jax import report, sweep
from cai_jax import stages as registry
from cai_jax.config.sweep import names
from cai_jax.stages import common

STAGE = "sweep"
log = logging.getLogger(__name__)
_TRAINED = ("sft", "ppo", "dpo")  # later ones train further (the pipeline's order)


def ordered(stages: list[str]) -> list[str]:
  """Stages in the pipeline's order; eval-helpful right after eval-harmless, others at the end."""
  order = list(registry.PIPELINE_ORDER)
  order.insert(order.index("eval-harmless") + 1, sweep.HELPFUL)
  return sorted(stages, key=lambda s: order.index(s) if s in order else len(order))


def job_config(config, job: sweep.Job):
  """The config of one job: its workdir, the seed in every seed field, the point's overrides."""
  c = copy.deepcopy(config)
  overrides = {"workdir": str(job.workdir)}
  if job.seed is not None:
    overrides.update({field: job.seed for field in names(config.sweep.seed_fields)})
  if job.point is not None:
    overrides.update(dict(job.point.setting.overrides))
  return config_lib.validate(config_lib.apply_overrides(c, overrides))


def final_policy(config, layout, stages: list[str]) -> str:
  """The most trained policy these stages leave in the workdir, else the base model."""
  exports = {"sft": layout.sft_export, "ppo": layout.ppo_export, "dpo": layout.dpo_export}
  trained = [s for s in _TRAINED if s in stages]
  return str(exports[trained[-1]]) if trained else config.model.source


def measured(config, stage: str, policy: str):
  """The evaluations score the point's final policy (against the base model), unless the
  config names what they score."""
  if stage in ("eval-harmless", sweep.HELPFUL) and not config.harmless.policy:
    config.harmless.policy = policy
    if config.sweep.baseline == "self" and not config.harmless.baseline:
      config.harmless.baseline = policy
  elif stage == "eval-safety" and not config.safety.models and policy != config.model.source:
    config.safety.models = policy
  elif stage == "eval-drift" and not config.drift.model:
    config.drift.model = policy
  elif stage == "audit" and not config.audit.models:
    config.audit.models = policy
  return config


def helpful_config(config, layout):
  """eval-helpful: eval-harmless on sweep.helpful_prompts, in <workdir>/helpful/."""
  c = copy.deepcopy(config)
  c.harmless.model = c.harmless.model or str(layout.harmless_model.resolve())
  c.harmless.prompts = config.sweep.helpful_prompts
  c.workdir = str(layout.root / sweep.HELPFUL_DIR)
  return c


def runner(config, levels: dict[str, list[str]]) -> sweep.Runner:
  """The sweep's Runner: a job's stages, in order, in its workdir."""
  def run_job(job: sweep.Job) -> None:
    job_cfg = job_config(config, job)
    # A point's own list is sweep.stages as its overrides left it.
    own = ordered(names(job_cfg.sweep.stages) if job.kind == "point" else levels[job.kind])
    layout = common.layout(job_cfg)
    upstream = levels["setup"] + (levels["shared"] if job.kind == "point" else [])
    policy = final_policy(job_cfg, layout, upstream + own)
    for name in own:
      where = layout.root / sweep.stage_folder(name)
      log.info("sweep: %s stage %s -> %s", job.kind, name, where)
      stage_cfg = measured(copy.deepcopy(job_cfg), name, policy)
      start = time.time()
      if name == sweep.HELPFUL:
        registry.get("eval-harmless")(helpful_config(stage_cfg, layout))
      else:
        registry.get(name)(stage_cfg)
      log.info("sweep: %s stage %s done in %.1f s", job.kind, name, time.time() - start)
  return run_job


@contextlib.contextmanager
def compile_cache(path: pathlib.Path | None):
  """JAX's persistent compilation cache in `path` while the sweep runs, unless one is set up
  already: every point compiles the same programs (same model, same shapes), and in one
  process a stage's fresh jit closures would otherwise compile them again for each point.
  The previous settings are restored afterwards."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  if path is None or jax.config.jax_compilation_cache_dir:
    yield
    return
  thresholds = ("jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in thresholds}
  path.mkdir(parents=True, exist_ok=True)
  cc.reset_cache()
  jax.config.update("jax_compilation_cache_dir", str(path))
  for n in thresholds:  # cache every program, however quick to compile
    jax.config.update(n, 0)
  try:
    yield
  finally:
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    for n, v in before.items():
      jax.config.update(n, v)


def run(config) -> dict:
  c = config.sweep
  settings = sweep.grid_settings(c.field, c.grid, c.points)
  if not settings:
    raise ValueError("sweep: no grid; set sweep.field and sweep.grid, or sweep.points")
  outcomes = names(c.outcomes)
  levels = {"setup": names(c.setup_stages), "shared": names(c.shared_stages)}
  dirs = sweep.SweepDirs(common.layout(config).stage_dir(STAGE))
  points = sweep.expand(settings, c.seeds)
  with compile_cache(dirs.root / "jax_cache" if c.compile_cache else None):
    results = sweep.run_sweep(dirs, points, runner(config, levels), setup_stages=levels["setup"],
                              shared_stages=levels["shared"], outcomes=outcomes,
                              on_error=c.on_error, only=names(c.only), max_points=c.max_points,
                              keep_models=c.keep_models)
  aggregates = sweep.aggregate(results, outcomes)
  title = c.title or c.name
  x_label = c.x_label or c.field or "setting"
  notes = [f"model: {config.model.source}", f"grid: {x_label} = {[s.label for s in settings]}",
           f"seeds: {list(c.seeds)}", f"setup stages: {c.setup_stages or '-'}",
           f"shared stages (per seed): {c.shared_stages or '-'}",
           f"point stages: {c.stages or 'per point'}", f"evaluation baseline: {c.baseline}"]
  jsonl, md = sweep.write_results(dirs, results, aggregates, outcomes, title=title,
                                  error_bars=c.error_bars, notes=notes)
  png = dirs.root / f"{c.name}.png"
  drawn = report.plot_ablation(
      [a.row() for a in aggregates], png, title=title, x_label=x_label, error_bars=c.error_bars,
      x_scale=c.x_scale, outcome_labels={n: sweep.OUTCOMES[n].label for n in outcomes})
  failed = [dict(point=r.point.name, error=r.error) for r in results if r.status == "failed"]
  for f in failed:
    log.error("sweep: point %s failed: %s", f["point"], f["error"])
  count = lambda status: sum(r.status == status for r in results)  # noqa: E731
  summary = dict(name=c.name, n_points=len(points), ran=count("done"),
                 finished_before=count("finished"), pending=count("pending"), failed=failed,
                 results=str(jsonl), table=str(md), plot=str(png) if drawn else None,
                 aggregates=[a.row() for a in aggregates])
  print(md.read_text(), flush=True)
  return common.finish(STAGE, summary, dirs.root / "summary.json")
