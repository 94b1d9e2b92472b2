"""The sweep machinery: grid expansion, config checks, resume, shared stages, outcomes, the
results table and the plot's error bars (a fake runner stands in for the real stages;
tests/test_ablations.py runs the real ones)."""

import json
import math
import pathlib

import numpy as np
import pytest

from cai_jax import config as config_lib
from cai_jax import report, sweep
from cai_jax.stages import sweep as sweep_stage


# ---------------------------------------------------------------------------- the grid
def test_field_and_grid_give_one_setting_per_value():
  settings = sweep.grid_settings("constitution.n_principles", (1, 4, 16), ())
  assert [(s.label, s.x, s.overrides) for s in settings] == [
      ("1", 1.0, (("constitution.n_principles", 1),)),
      ("4", 4.0, (("constitution.n_principles", 4),)),
      ("16", 16.0, (("constitution.n_principles", 16),))]


def test_non_numeric_values_make_a_categorical_axis():
  settings = sweep.grid_settings("sl_data.mode", ("critique", "direct"), ())
  assert [s.x for s in settings] == [None, None]


def test_points_carry_several_overrides_and_one_missing_x_makes_every_x_categorical():
  settings = sweep.grid_settings("", (), (
      dict(label="soft", x=0, overrides={"feedback.hard_labels": False}),
      dict(label="CoT", overrides={"feedback.cot": True, "feedback.clamp_lo": 0.4})))
  assert [s.label for s in settings] == ["soft", "CoT"]
  assert settings[1].overrides == (("feedback.cot", True), ("feedback.clamp_lo", 0.4))
  assert [s.x for s in settings] == [None, None]


def test_expand_runs_every_setting_once_per_seed_seed_major():
  settings = sweep.grid_settings("sft.rounds", ("1", "2"), ())
  points = sweep.expand(settings, (3, 7))
  assert [(p.setting.label, p.seed, p.index, p.name) for p in points] == [
      ("1", 3, 0, "1_seed3"), ("2", 3, 1, "2_seed3"),
      ("1", 7, 0, "1_seed7"), ("2", 7, 1, "2_seed7")]


@pytest.mark.parametrize("field, grid, points, message", [
    ("sft.rounds", ("1",), (dict(label="a", overrides={}),), "either sweep.field"),
    ("sft.rounds", (), (), "need both"),
    ("", (), (dict(label="", overrides={}),), r"sweep.points\[0\]: 'label'"),
    ("", (), (dict(label="a", overides={}),), r"sweep.points\[0\]: expected a dict with keys"),
    ("", (), (dict(label="a b", overrides={}), dict(label="a_b", overrides={})),
     "folder name 'a_b'"),
])
def test_bad_grids_are_errors_that_name_the_field(field, grid, points, message):
  with pytest.raises(ValueError, match=message):
    sweep.grid_settings(field, grid, points)


# ---------------------------------------------------------------------------- config checks
def _config(**sweep_fields):
  config = config_lib.base_config()
  for k, v in sweep_fields.items():
    config.sweep[k] = v
  return config


def test_the_default_sweep_section_is_valid():
  config_lib.validate(config_lib.base_config())


@pytest.mark.parametrize("fields, message", [
    (dict(points=(dict(label="a", overrides={"sft.num_stpes": 3}),), stages="sft"),
     "did you mean 'num_steps'"),
    (dict(points=(dict(label="a", overrides={"sft.num_steps": "many"}),), stages="sft"),
     r"sweep.points\[0\] \(a\)"),
    (dict(field="sl_data.n_rounds", grid=(1, 2), shared_stages="sl-data", stages="sft"),
     r"overrides sl_data.n_rounds, which the setup/shared stage\(s\) \['sl-data'\] read"),
    (dict(field="sampler.temperature", grid=(0.5,), setup_stages="harmless-rm", stages="sft"),
     r"\['harmless-rm'\] read"),
    (dict(field="sft.rounds", grid=("1",), stages="sft,eval-harmles"),
     "did you mean 'eval-harmless'"),
    (dict(field="sft.rounds", grid=("1",), stages="sft,eval-harmless", outcomes="harmlesness"),
     "did you mean 'harmlessness'"),
    (dict(field="sft.rounds", grid=("1",), stages="sft", outcomes="orr"),
     "'orr' is read from stage eval-safety's summary"),
    (dict(field="harmless.prompts", grid=("red_team",), shared_stages="eval-hhh",
          stages="eval-mc"), "write the folder 'eval'"),
    (dict(field="seed", grid=(1, 2), stages="sft"), "cannot override 'seed'"),
    (dict(field="sft.rounds", grid=("1",), stages="sft", seeds=(0, 0)), "sweep.seeds"),
    (dict(field="sft.rounds", grid=("1",), stages="sft,eval-harmless", only="2"),
     r"sweep.only: no setting labelled \['2'\]"),
    (dict(field="sft.rounds", grid=("1",), stages="sft,eval-harmless", baseline="self",
          outcomes="harmlessness_gain"), "baseline='self' does not sample"),
])
def test_bad_sweep_configs_fail_at_load(fields, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(_config(**fields))


# ---------------------------------------------------------------------------- running
class FakeRunner:
  """Records the jobs; writes the files the real stages would (harmless.json holds a score
  that is a known function of the setting and the seed)."""

  def __init__(self, fail_label=None):
    self.jobs, self.fail_label = [], fail_label

  @staticmethod
  def score(point) -> float:
    return 10.0 * point.index + point.seed ** 2

  def __call__(self, job):
    self.jobs.append((job.kind, job.seed, job.point.name if job.point else None))
    trained = {"setup": "harmless_rm", "shared": "sft", "point": "ppo"}[job.kind]
    for folder in ("checkpoints/10", "hf"):  # what a training stage leaves
      (job.workdir / trained / folder).mkdir(parents=True, exist_ok=True)
    if job.kind == "setup":
      (job.workdir / "harmless_rm" / "model").mkdir(parents=True, exist_ok=True)
    elif job.kind == "shared":
      (job.workdir / "sl_data").mkdir(parents=True, exist_ok=True)
      (job.workdir / "sl_data" / "summary.json").write_text(json.dumps({"quality": {"red_team": [
          {"round": r, "harmless": 100.0 * job.seed + r} for r in range(3)]}}))
    else:
      if job.point.setting.label == self.fail_label:
        raise RuntimeError("this point is broken")
      out = job.workdir / "harmless"
      out.mkdir(parents=True, exist_ok=True)
      models = [{"mean_score": -1.0}, {"mean_score": self.score(job.point)}]
      (out / "harmless.json").write_text(json.dumps({"models": models}))


def _run(root, runner, seeds=(0, 1, 2), **kwargs):
  settings = sweep.grid_settings("", (), [dict(label=str(r), x=r, overrides={"sft.rounds": str(r)})
                                          for r in (1, 2)])
  points = sweep.expand(settings, seeds)
  kwargs = dict(dict(setup_stages=["harmless-rm"], shared_stages=["sl-data", "sft"],
                     outcomes=["harmlessness", "round_harmlessness"]), **kwargs)
  return points, sweep.run_sweep(sweep.SweepDirs(root), points, runner, **kwargs)


def test_setup_runs_once_shared_stages_once_per_seed_and_every_point_once(tmp_path):
  runner = FakeRunner()
  _run(tmp_path, runner)
  kinds = [j[:2] for j in runner.jobs]
  assert kinds.count(("setup", None)) == 1
  assert [s for k, s in kinds if k == "shared"] == [0, 1, 2]
  assert [j[2] for j in runner.jobs if j[0] == "point"] == [
      "1_seed0", "2_seed0", "1_seed1", "2_seed1", "1_seed2", "2_seed2"]


def test_points_read_the_shared_folders_through_relative_links(tmp_path):
  _run(tmp_path, FakeRunner())
  point = tmp_path / "points" / "2_seed1"
  assert (point / "sl_data").is_symlink() and not pathlib.Path(
      (point / "sl_data").readlink()).is_absolute()
  assert (point / "sl_data").resolve() == (tmp_path / "shared" / "seed_1" / "sl_data").resolve()
  assert (point / "harmless_rm" / "model").is_dir()  # the setup folder, linked too


def test_finished_folders_keep_no_checkpoints_and_points_no_weights_unless_asked(tmp_path):
  _run(tmp_path, FakeRunner(), seeds=(0,), keep_models=False)
  assert not list(tmp_path.glob("**/checkpoints"))
  assert (tmp_path / "setup" / "harmless_rm" / "model").is_dir()  # the evaluator stays
  assert (tmp_path / "shared" / "seed_0" / "sft" / "hf").is_dir()  # the points read it
  assert not (tmp_path / "points" / "1_seed0" / "ppo" / "hf").exists()
  assert (tmp_path / "points" / "1_seed0" / "sft" / "hf").is_dir()  # through the link
  _run(tmp_path / "keep", FakeRunner(), seeds=(0,), keep_models=True)
  assert (tmp_path / "keep" / "points" / "1_seed0" / "ppo" / "hf").is_dir()


def test_outcomes_come_from_the_points_files(tmp_path):
  points, results = _run(tmp_path, FakeRunner())
  for p, r in zip(points, results):
    # harmlessness: the last model of harmless.json; round_harmlessness: sl-data row round == x.
    assert r.outcomes == {"harmlessness": FakeRunner.score(p),
                          "round_harmlessness": 100.0 * p.seed + p.setting.x}


def test_a_rerun_skips_finished_points_and_runs_the_unfinished_one(tmp_path):
  _run(tmp_path, FakeRunner())
  (tmp_path / "points" / "2_seed1" / sweep.DONE).unlink()  # as if killed before it finished
  runner = FakeRunner()
  _, results = _run(tmp_path, runner)
  assert runner.jobs == [("point", 1, "2_seed1")]  # no setup, no shared stages: they are done
  assert [r.status for r in results] == ["finished"] * 3 + ["done"] + ["finished"] * 2
  assert results[0].outcomes["harmlessness"] == 0.0  # read back from the finished point
  done = json.loads((tmp_path / "points" / "1_seed0" / sweep.DONE).read_text())
  assert results[0].seconds == done["seconds"]


def test_only_and_max_points_leave_the_other_points_pending_for_a_later_run(tmp_path):
  runner = FakeRunner()
  _, results = _run(tmp_path, runner, only=["2"], max_points=2)
  assert [j[2] for j in runner.jobs if j[0] == "point"] == ["2_seed0", "2_seed1"]
  assert [r.status for r in results] == ["pending", "done"] * 2 + ["pending"] * 2
  assert results[0].outcomes == {"harmlessness": None, "round_harmlessness": None}
  runner = FakeRunner()
  _, results = _run(tmp_path, runner)  # the rest, later
  assert [j[2] for j in runner.jobs if j[0] == "point"] == ["1_seed0", "1_seed1", "1_seed2",
                                                           "2_seed2"]
  assert [r.status for r in results] == ["done", "finished"] * 2 + ["done"] * 2


def test_a_failed_point_is_recorded_has_no_done_file_and_the_others_still_run(tmp_path):
  _, results = _run(tmp_path, FakeRunner(fail_label="2"))
  assert [r.status for r in results] == ["done", "failed"] * 3
  assert results[1].error == "RuntimeError: this point is broken"
  assert not (tmp_path / "points" / "2_seed0" / sweep.DONE).exists()
  with pytest.raises(RuntimeError, match="broken"):
    _run(tmp_path / "again", FakeRunner(fail_label="2"), on_error="raise")


# ---------------------------------------------------------------------------- results
def test_aggregates_are_numpy_mean_std_and_sem_over_seeds(tmp_path):
  points, results = _run(tmp_path, FakeRunner(), seeds=(0, 1, 3))
  rows = [a for a in sweep.aggregate(results, ["harmlessness"])]
  for a in rows:
    values = np.array([10.0 * a.index + s ** 2 for s in (0, 1, 3)])
    assert a.values == tuple(values)
    assert a.mean == pytest.approx(values.mean())
    assert a.std == pytest.approx(np.std(values, ddof=1))
    assert a.sem == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))


def test_one_seed_has_no_error_bar(tmp_path):
  _, results = _run(tmp_path, FakeRunner(), seeds=(4,))
  a = sweep.aggregate(results, ["harmlessness"])[0]
  assert a.n == 1 and math.isnan(a.std) and a.row()["sem"] is None


def test_the_plot_draws_the_means_and_numpy_error_bars(tmp_path):
  _, results = _run(tmp_path, FakeRunner(), seeds=(0, 1, 3))
  rows = [a.row() for a in sweep.aggregate(results, ["harmlessness", "round_harmlessness"])]
  for bars in ("sem", "std"):
    drawn = report.plot_ablation(rows, tmp_path / f"{bars}.png", error_bars=bars)
    assert (tmp_path / f"{bars}.png").stat().st_size > 0
    values = {i: np.array([10.0 * i + s ** 2 for s in (0, 1, 3)]) for i in (0, 1)}
    std = [np.std(values[i], ddof=1) for i in (0, 1)]
    want = std if bars == "std" else [s / np.sqrt(3) for s in std]
    assert drawn["harmlessness"]["x"] == [1.0, 2.0]
    np.testing.assert_allclose(drawn["harmlessness"]["mean"], [values[0].mean(), values[1].mean()])
    np.testing.assert_allclose(drawn["harmlessness"]["err"], want)


def test_categorical_settings_are_plotted_by_position(tmp_path):
  rows = [dict(label=l, x=None, outcome="orr", values=[v], mean=v, std=None, sem=None)
          for l, v in (("soft", 0.1), ("hard", 0.3))]
  drawn = report.plot_ablation(rows, tmp_path / "p.png")
  assert drawn["orr"] == dict(x=[0, 1], mean=[0.1, 0.3], err=[0.0, 0.0], labels=["soft", "hard"])


def test_results_table_has_a_row_per_point_and_a_mean_row_per_setting(tmp_path):
  points, results = _run(tmp_path, FakeRunner(fail_label="2"), seeds=(0, 1))
  outcomes = ["harmlessness"]
  jsonl, md = sweep.write_results(sweep.SweepDirs(tmp_path), results,
                                  sweep.aggregate(results, outcomes), outcomes, title="t")
  rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
  assert [(r["label"], r["seed"], r["status"]) for r in rows] == [
      ("1", 0, "done"), ("2", 0, "failed"), ("1", 1, "done"), ("2", 1, "failed")]
  assert [r["harmlessness"] for r in rows] == [0.0, None, 1.0, None]
  text = md.read_text()
  assert "| 1 | 1 | 0.5 ± 0.5 (n=2) |" in text  # mean of 0 and 1, sem = std / sqrt 2 = 0.5
  assert "| 2 | 2 | - (n=0) |" in text
  assert "- 2_seed0: RuntimeError: this point is broken" in text


# ---------------------------------------------------------------------------- outcome readers
def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))


def test_safety_outcomes_read_the_last_models_rates(tmp_path):
  _write(tmp_path / "safety" / "safety.json", {"models": [
      {"orr": {"rate": 0.9}, "ucr": {"rate": 0.9}}, {"orr": {"rate": 0.25}, "ucr": {"rate": 0.5}}]})
  point = sweep.expand(sweep.grid_settings("sft.rounds", ("1",), ()), (0,))[0]
  assert sweep.read_outcomes(tmp_path, point, ["orr", "ucr", "harmlessness"]) == {
      "orr": 0.25, "ucr": 0.5, "harmlessness": None}


@pytest.mark.parametrize("asr", [0.125, {"rate": 0.125, "ci95": [0.0, 0.5]}])
def test_audit_asr_is_read_as_a_number_or_a_rate(tmp_path, asr):
  _write(tmp_path / "audit" / "summary.json", {"asr": asr})
  point = sweep.expand(sweep.grid_settings("sft.rounds", ("1",), ()), (0,))[0]
  assert sweep.read_outcomes(tmp_path, point, ["asr"]) == {"asr": 0.125}


def test_without_a_summary_asr_the_audits_family_rates_of_the_last_model_are_pooled(tmp_path):
  family = lambda a, b: {"direct": {"asr": {"n": 4, "count": a}},  # noqa: E731
                         "roleplay": {"asr": {"n": 6, "count": b}}}
  _write(tmp_path / "audit" / "audit.json", {"models": {"base": {"family": family(4, 6)},
                                                        "sft/hf": {"family": family(1, 2)}}})
  point = sweep.expand(sweep.grid_settings("sft.rounds", ("1",), ()), (0,))[0]
  assert sweep.read_outcomes(tmp_path, point, ["asr"]) == {"asr": 0.3}  # (1 + 2) / (4 + 6)


def test_helpfulness_is_read_from_the_helpful_sub_run(tmp_path):
  _write(tmp_path / "helpful" / "harmless" / "harmless.json", {"models": [{"mean_score": 2.5}]})
  point = sweep.expand(sweep.grid_settings("sft.rounds", ("1",), ()), (0,))[0]
  assert sweep.read_outcomes(tmp_path, point, ["helpfulness"]) == {"helpfulness": 2.5}


# ---------------------------------------------------------------------------- the stage's wiring
def test_the_measured_policy_is_the_most_trained_one_else_the_base_model(tmp_path):
  config = config_lib.base_config()
  layout = sweep_stage.common.layout(config)
  assert sweep_stage.final_policy(config, layout, ["sl-data", "sft", "rm", "ppo"]) == str(
      layout.ppo_export)
  assert sweep_stage.final_policy(config, layout, ["sft", "dpo"]) == str(layout.dpo_export)
  assert sweep_stage.final_policy(config, layout, ["sl-data"]) == "embedded"


def test_stages_run_in_pipeline_order_with_eval_helpful_after_eval_harmless():
  assert sweep_stage.ordered(["eval-safety", "eval-helpful", "sft", "eval-harmless", "audit"]) == [
      "sft", "eval-safety", "eval-harmless", "eval-helpful", "audit"]


def test_the_evaluations_measure_the_points_policy_unless_the_config_names_one():
  config = config_lib.base_config()
  for stage, field in (("eval-harmless", "harmless.policy"), ("eval-helpful", "harmless.policy"),
                       ("eval-safety", "safety.models"), ("audit", "audit.models")):
    assert config_lib.get_field(sweep_stage.measured(config.copy_and_resolve_references(), stage,
                                                     "p/sft/hf"), field) == "p/sft/hf"
  config.harmless.policy = "mine"
  assert sweep_stage.measured(config, "eval-harmless", "p/sft/hf").harmless.policy == "mine"
  config = config_lib.base_config()
  config.sweep.baseline = "self"  # the policy answers once, as its own baseline
  assert sweep_stage.measured(config, "eval-helpful", "p/sft/hf").harmless.baseline == "p/sft/hf"
  # The base model is eval-safety's model 0 already: not listed twice.
  assert sweep_stage.measured(config, "eval-safety", config.model.source).safety.models == ""
