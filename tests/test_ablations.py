"""Every experiments/ablations/*.py runlocal variant runs on the tiny model, leaves its results
table and plot, and its points differ in the way the ablation says they do.

The six sweeps share one JAX compilation cache (the stage would give each its own), so the
programs that every sweep compiles the same way are compiled once for the module. The two
sweeps that run PPO at every point (labels, rl_method) run their first seed only: a second
seed repeats the same code, and the seeds' bookkeeping is tested by the revisions sweep here
and by tests/test_sweep.py.
"""

import importlib.util
import json
import pathlib

import pytest

from cai_jax import config as config_lib
from cai_jax import sweep
from cai_jax.stages import sweep as sweep_stage

REPO = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "experiments" / "ablations"
NAMES = ("revisions", "principles", "critique", "labels", "rl_method", "sampling")


def test_every_ablation_file_is_tested_here():
  assert {p.stem for p in ABLATIONS.glob("*.py")} - {"common"} == set(NAMES)


def _module(name: str):
  spec = importlib.util.spec_from_file_location(f"ablation_{name}", ABLATIONS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["", "runlocal"])
def test_both_variants_are_valid_locked_configs_with_a_grid(name, variant):
  config = config_lib.validate(_module(name).get_config(variant))
  assert config.is_locked and config.sweep.name == name
  assert sweep.grid_settings(config.sweep.field, config.sweep.grid, config.sweep.points)
  assert len(config.sweep.seeds) >= 2


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  with sweep_stage.compile_cache(tmp_path_factory.mktemp("jax_cache")):
    yield


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_runlocal(name: str, tmp_path: pathlib.Path, first_seed_only: bool = False):
  """Runs the runlocal sweep (batches of 4 over the 8 test devices); checks what every
  sweep leaves and returns (config, summary, results rows, sweep folder)."""
  config = _module(name).get_config("runlocal")
  overrides = {"workdir": str(tmp_path), "mesh.data": 4, "mesh.tensor": 2}
  if first_seed_only:
    overrides["sweep.seeds"] = config.sweep.seeds[:1]
  config_lib.apply_overrides(config, overrides)
  summary = sweep_stage.run(config_lib.validate(config))
  root = tmp_path / "sweep"
  c = config.sweep
  settings = sweep.grid_settings(c.field, c.grid, c.points)
  rows = _read_jsonl(root / "results.jsonl")
  assert summary["failed"] == []
  assert [(r["label"], r["seed"]) for r in rows] == [(s.label, seed) for seed in c.seeds
                                                     for s in settings]
  outcomes = [o.strip() for o in c.outcomes.split(",")]
  for r in rows:  # every outcome was measured at every point
    assert all(isinstance(r[o], float) for o in outcomes), r
  table = (root / "results.md").read_text()
  assert all(f"| {s.label} |" in table for s in settings)
  assert summary["plot"] == str(root / f"{name}.png") and (root / f"{name}.png").stat().st_size > 0
  return config, summary, rows, root


def _records(point_dir: pathlib.Path) -> list[dict]:
  return _read_jsonl(point_dir / "sl_data" / "sl_cai.jsonl")


def test_revisions_share_sl_data_per_seed_and_train_on_one_round_each(tmp_path, compile_cache):
  config, _, rows, root = run_runlocal("revisions", tmp_path)
  assert sorted(p.name for p in (root / "shared").iterdir()) == ["seed_0", "seed_1"]
  for seed in (0, 1):
    summary = root / "shared" / f"seed_{seed}" / "sl_data" / "summary.json"
    quality = json.loads(summary.read_text())
    by_round = {r["round"]: r["harmless"] for r in quality["quality"]["red_team"]}
    for r in (0, 1, 2):
      point = root / "points" / f"{r}_seed{seed}"
      assert (point / "sl_data").is_symlink()
      assert (point / "sft").is_dir() == (r > 0)  # round 0: the model before SL-CAI
      row = next(x for x in rows if x["label"] == str(r) and x["seed"] == seed)
      assert row["round_harmlessness"] == pytest.approx(by_round[r])
      if r:
        sft = json.loads((point / "sft" / "summary.json").read_text())
        assert sft["data"].startswith("3 records -> examples (helpful: 1, revision: 2)")


def test_principles_draw_only_from_the_kept_subset(tmp_path, compile_cache):
  config, _, _, root = run_runlocal("principles", tmp_path)
  for n in config.sweep.grid:
    used = {r["principle"] for p in root.glob(f"points/{n}_seed*")
            for rec in _records(p) for r in rec.get("rounds", [])}
    assert 1 <= len(used) <= n, (n, used)


def test_critique_points_revise_with_and_without_critiques(tmp_path, compile_cache):
  _, _, _, root = run_runlocal("critique", tmp_path)
  for mode in ("critique", "direct"):
    point = root / "points" / f"{mode}_seed0"
    rounds = [r for rec in _records(point) for r in rec.get("rounds", [])]
    assert rounds and all(bool(r["critique"]) == (mode == "critique") for r in rounds)


def test_labels_points_write_soft_hard_and_clamped_labels(tmp_path, compile_cache):
  _, _, _, root = run_runlocal("labels", tmp_path, first_seed_only=True)
  p_a = {label: [r["p_a"] for r in _read_jsonl(root / "points" / f"{sweep.safe_name(label)}_seed0"
                                               / "feedback" / "feedback.jsonl")]
         for label in ("soft", "hard", "CoT clamped 40-60%")}
  assert all(p in (0.0, 1.0) for p in p_a["hard"])
  assert all(0.4 <= p <= 0.6 for p in p_a["CoT clamped 40-60%"])
  assert all(0.0 < p < 1.0 for p in p_a["soft"])
  assert (root / "shared" / "seed_0" / "sft" / "hf").is_dir()  # SFT once per seed, shared


def test_rl_methods_measure_their_own_policy(tmp_path, compile_cache):
  _, _, _, root = run_runlocal("rl_method", tmp_path, first_seed_only=True)
  trained = {"SFT only": "shared", "RM + PPO": "ppo", "DPO": "dpo", "d-RLAIF": "ppo"}
  for label, stage in trained.items():
    point = root / "points" / f"{sweep.safe_name(label)}_seed0"
    measured = json.loads((point / "harmless" / "harmless.json").read_text())["models"][-1]["model"]
    assert measured == str(point / "sft" / "hf" if stage == "shared" else point / stage / "hf")
    assert (point / "rm").is_dir() == (label == "RM + PPO")
    assert (point / "feedback").is_symlink()  # the same AI labels for every method


def test_sampling_runs_uniform_and_tiered(tmp_path, compile_cache):
  _, summary, _, root = run_runlocal("sampling", tmp_path)
  assert summary["ran"] == 4
  assert {a["label"] for a in summary["aggregates"]} == {"uniform", "tiered"}
  assert all((root / "points" / f"{s}_seed0" / "sl_data" / "sl_cai.jsonl").is_file()
             for s in ("uniform", "tiered"))
