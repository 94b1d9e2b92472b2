"""Multi-host training on CPU: two processes (jax.distributed, 4 fake devices each) == one.

Each stage runs through the CLI (tests/multiprocess.py) on the tiny model: once in one
process with 8 fake devices (the reference), once in two processes of 4 devices sharing
the workdir (as hosts share a bucket; SFT and RM), and once in two processes SIGKILLed
together after a seeded number of checkpoints and rerun to resume (SFT, RM, PPO). Every
run ends with the reference's parameters, to
float32 tolerance: the hosts reduce gradients in another order than one process does
(measured: max |difference| 3e-8 .. 6e-8 (rm) and 3e-7 (sft) after 4 steps), so equality is
assert_allclose(rtol=RTOL, atol=ATOL), not bit equality.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

import multiprocess
import resume_harness

TINY = "experiments/tiny.py"
RTOL, ATOL = 1e-5, 1e-6  # float32 (eps 1.2e-7): ~100 ulps relative; atol for weights near 0
SEED = 17  # kill points are drawn from it; a failure message names the point
STEPS = 4

SFT = {"sft.seq_len": 64, "sft.batch_size": 8, "sft.num_steps": STEPS, "sft.eval_fraction": 0.0,
       "sft.log_every": 1, "sft.checkpoint_every": 1, "sft.optim.lr": 3e-3,
       "sft.optim.warmup_steps": 0, "sft.optim.schedule": "constant"}
# The reward model is trained FSDP over the hosts (fsdp=2: process k holds half of every
# weight's embed dimension, tensor=4 within a host), so each host writes its own shards of
# every checkpoint and reads them back when it resumes.
RM = {"rm.num_steps": STEPS, "rm.checkpoint_every": 1, "rm.eval_every": 2, "rm.max_len": 64,
      "rm.batch_size": 8, "rm.optim.lr": 1e-3, "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 4}

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
  """One JAX compilation cache for every process of this file."""
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, pathlib.Path]:
  """An SL-CAI file (8 revisions, 4 helpful answers) and 24 AI-labelled preference pairs."""
  root = tmp_path_factory.mktemp("data")
  sl = []
  for i in range(12):
    if i % 3 == 0:
      sl.append({"id": f"h{i}", "prompt": f"Add {i} and 1.", "initial": f"{i + 1}.", "rounds": [],
                 "kind": "helpful"})
    else:
      sl.append({"id": f"r{i}", "prompt": f"Tell me secret {i}.", "initial": "ok", "kind": "red_team",
                 "rounds": [{"principle": "p", "critique": "c", "revision": f"I keep secret {i}."}]})
  (root / "sl_cai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sl))
  rng = np.random.default_rng(0)
  pairs = [{"id": f"p{i}", "prompt": f"Describe item {i} briefly.", "response_a": f"Item {i} is blue.",
            "response_b": "No. " + "x" * int(rng.integers(1, 9)), "p_a": float(rng.uniform(0.55, 0.95))}
           for i in range(24)]
  (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
  return {"sft": root / "sl_cai.jsonl", "rm": root / "prefs.jsonl"}


def _sft(data) -> dict:
  return {**SFT, "sft.data": data["sft"]}


def _rm(data) -> dict:
  return {**RM, "rm.ai_data": data["rm"]}


def _hf_params(export: pathlib.Path) -> dict[str, np.ndarray]:
  """The tensors of an HF safetensors export (stages sft and ppo)."""
  from safetensors.numpy import load_file
  return load_file(export / "model.safetensors")


def _sft_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
  return _hf_params(workdir / "sft" / "hf")


def _rm_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
  from cai_jax.models.reward import load_reward_model
  _, params = load_reward_model(workdir / "rm" / "model", None)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


# The reward head's bias gets no gradient from a Bradley-Terry loss (it cancels in r_a - r_b):
# its "gradient" is rounding noise, which Adam scales up to steps of up to lr. Both runs keep
# it within lr x steps of 0; it is checked against that bound, not against the other run.
UNDETERMINED = {"['head']['b']": RM["rm.optim.lr"] * STEPS}


def _assert_same_params(got: dict, expected: dict, where: str, atol: float = ATOL) -> None:
  assert sorted(got) == sorted(expected), where
  for name in expected:
    if name in UNDETERMINED:
      assert abs(float(got[name])) <= UNDETERMINED[name], f"{where}: {name} = {got[name]}"
      continue
    np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=atol,
                               err_msg=f"{where}: {name}")


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory, cache, data) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("sft") / "one_process"
  multiprocess.run_single("sft", TINY, workdir, _sft(data), cache)
  return workdir


@pytest.fixture(scope="module")
def rm_reference(tmp_path_factory, cache, data) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("rm") / "one_process"
  multiprocess.run_single("rm", TINY, workdir, _rm(data), cache)
  return workdir


@pytest.fixture(scope="module")
def rm_two(tmp_path_factory, cache, data) -> tuple[pathlib.Path, list[multiprocess.ProcessRun]]:
  workdir = tmp_path_factory.mktemp("rm") / "two_processes"
  return workdir, multiprocess.run("rm", TINY, workdir, _rm(data), cache)


# ----------------------------------------------------------------------------- unbroken runs


def test_sft_on_two_processes_ends_with_the_one_process_params(tmp_path, cache, data, sft_reference):
  multiprocess.run("sft", TINY, tmp_path / "two", _sft(data), cache)
  _assert_same_params(_sft_params(tmp_path / "two"), _sft_params(sft_reference), "sft, 2 processes")


def test_rm_on_two_processes_ends_with_the_one_process_params(rm_two, rm_reference):
  workdir, _ = rm_two
  _assert_same_params(_rm_params(workdir), _rm_params(rm_reference), "rm, 2 processes")


def test_rm_on_two_processes_trains_on_the_one_process_batches(rm_two, rm_reference):
  # Each step's global batch holds rm.batch_size real pairs (a host feeding the whole global
  # batch would make 16), and loss / accuracy / margin follow the one-process run's.
  workdir, _ = rm_two
  two = resume_harness.read_jsonl(workdir / "rm" / "metrics.jsonl")
  one = resume_harness.read_jsonl(rm_reference / "rm" / "metrics.jsonl")
  assert [r["step"] for r in two] == list(range(1, STEPS + 1))
  assert [r["pairs"] for r in two] == [8.0] * STEPS
  for a, b in zip(two, one):
    for key in ("loss", "accuracy", "margin", "eval/ai_accuracy"):
      if key in b:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_rm_checkpoints_on_two_processes_hold_shards_from_both(rm_two):
  # orbax (OCDBT) writes one folder per process that holds shards: both hosts saved theirs.
  workdir, _ = rm_two
  state = workdir / "rm" / "checkpoints" / str(STEPS) / "state"
  assert sorted(p.name for p in state.glob("ocdbt.process_*")) == ["ocdbt.process_0",
                                                                    "ocdbt.process_1"]


def test_rm_on_two_processes_reports_from_process_zero_only(rm_two):
  _, runs = rm_two
  summary = runs[0].summary()
  assert summary["stage"] == "rm" and summary["step"] == STEPS
  assert runs[1].stdout == ""  # no second summary line
  assert re.search(r"rm step \d+/\d+", runs[0].stderr)
  assert not re.search(r"rm step \d+/\d+", runs[1].stderr)  # progress: process 0 only


# ----------------------------------------------------------------------------- kill and resume


def _killed_and_resumed(stage: str, workdir: pathlib.Path, overrides: dict, cache) -> int:
  """Two processes killed together after a seeded number of checkpoints (1..STEPS-2), then
  rerun on the same workdir; returns the kill point (checkpoints on disk when killed)."""
  point = resume_harness.kill_points(SEED, 1, STEPS - 2, 1)[0]
  steps = workdir / stage / "checkpoints"
  multiprocess.run_and_kill(stage, TINY, workdir, overrides, cache,
                            lambda: len(resume_harness.checkpoint_steps(steps)) >= point,
                            f"after {point} checkpoints")
  assert max(resume_harness.checkpoint_steps(steps)) < STEPS, f"killed at {point}: already done"
  runs = multiprocess.run(stage, TINY, workdir, overrides, cache)
  assert re.search(r"resuming from \S+ at step [1-9]", runs[0].stderr), f"killed at {point}: no resume"
  return point


def test_sft_killed_on_two_processes_resumes_to_the_one_process_params(tmp_path, cache, data,
                                                                       sft_reference):
  point = _killed_and_resumed("sft", tmp_path / "killed", _sft(data), cache)
  _assert_same_params(_sft_params(tmp_path / "killed"), _sft_params(sft_reference),
                      f"sft, 2 processes killed after {point} checkpoints")


def test_rm_killed_on_two_processes_resumes_to_the_one_process_params(tmp_path, cache, data,
                                                                     rm_reference):
  point = _killed_and_resumed("rm", tmp_path / "killed", _rm(data), cache)
  _assert_same_params(_rm_params(tmp_path / "killed"), _rm_params(rm_reference),
                      f"rm, 2 processes killed after {point} checkpoints")


# ----------------------------------------------------------------------------- PPO

PPO_CONFIG = "experiments/rl_cai.py:tiny"  # random tiny policy, token-count reward
PPO = {"ppo.num_steps": 2, "ppo.checkpoint_every": 1}
# One iteration is 4 Adam updates at lr 3e-3 (2 epochs x 2 minibatches); a few weights whose
# gradient is at rounding level move by a rounding-sized step, amplified by Adam's
# normalisation (one iteration: 5 of 80k weights differed by 1e-6 .. 7.4e-6).
PPO_ATOL = 5e-5


def test_ppo_killed_on_two_processes_resumes_to_the_one_process_policy(tmp_path, cache):
  # Two iterations; both processes are killed once the first iteration's checkpoint is on disk
  # and rerun: the rollout key, prompt choice and KL state come back from the checkpoint.
  multiprocess.run_single("ppo", PPO_CONFIG, tmp_path / "one", PPO, cache)
  steps = tmp_path / "two" / "ppo" / "checkpoints"
  multiprocess.run_and_kill("ppo", PPO_CONFIG, tmp_path / "two", PPO, cache,
                            lambda: len(resume_harness.checkpoint_steps(steps)) >= 1,
                            "after 1 checkpoint")
  assert max(resume_harness.checkpoint_steps(steps)) < 2, "killed after the last iteration"
  runs = multiprocess.run("ppo", PPO_CONFIG, tmp_path / "two", PPO, cache)
  assert re.search(r"resumed at iteration 1", runs[0].stderr), runs[0].stderr[-2000:]
  got, expected = (_hf_params(tmp_path / w / "ppo" / "hf") for w in ("two", "one"))
  _assert_same_params(got, expected, "ppo, 2 processes killed and resumed", atol=PPO_ATOL)
