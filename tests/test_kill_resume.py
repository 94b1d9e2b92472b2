"""kill -9 at a random point, rerun, and the result is the unbroken run's.

Each stage runs as a subprocess on the tiny model (tests/resume_harness.py): once
uninterrupted, then, for two seeded kill points, SIGKILLed as soon as its files show that
much progress and rerun on the same workdir. Training stages (rm, harmless-rm) must end
with bit-identical parameters; generation stages (sl-data, feedback, audit,
eval-safety, eval-harmless) with the same records: none lost, none twice, the same text.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

import resume_harness as harness

TINY = "experiments/tiny.py"
SEED = 18  # kill points are drawn from it; a failure message names the point


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
  """One JAX compilation cache for every process of this file."""
  return tmp_path_factory.mktemp("jax_cache")


def _pairs(path: pathlib.Path, n: int, hh: bool) -> pathlib.Path:
  """n preference pairs: our format (AI labels, p_a varies) or hh-rlhf transcripts."""
  rng = np.random.default_rng(0)
  with path.open("w") as f:
    for i in range(n):
      request = f"Please describe item number {i} in a few words."
      good, bad = f"Item {i} is small and blue.", f"No. {'x' * int(rng.integers(1, 9))}"
      if hh:
        record = {"chosen": f"\n\nHuman: {request}\n\nAssistant: {good}",
                  "rejected": f"\n\nHuman: {request}\n\nAssistant: {bad}"}
      else:
        record = {"id": f"p{i}", "prompt": request, "response_a": good, "response_b": bad,
                  "p_a": float(rng.uniform(0.55, 0.95))}
      f.write(json.dumps(record) + "\n")
  return path


def _params(model_dir: pathlib.Path) -> list[np.ndarray]:
  from cai_jax.models.reward import load_reward_model
  _, params = load_reward_model(model_dir, None)
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def _assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray], where: str) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y, err_msg=where)


# ----------------------------------------------------------------------------- training stages

RM_STEPS = 6


def _training_kill_resume(tmp_path, cache, stage: str, folder: str, overrides: dict) -> pathlib.Path:
  """Unbroken run, then two runs killed after a seeded number of checkpoints and resumed;
  the reward models they end with are bit-identical. Returns the unbroken run's workdir."""
  full = tmp_path / "full"
  harness.run(stage, TINY, full, overrides, cache)
  expected = _params(full / folder / "model")
  for point in harness.kill_points(SEED, 1, RM_STEPS - 2, 2):
    workdir = tmp_path / f"killed_at_{point}"
    steps = workdir / folder / "checkpoints"
    harness.run_and_kill(stage, TINY, workdir, overrides, cache,
                         lambda: len(harness.checkpoint_steps(steps)) >= point,
                         f"after {point} checkpoints")
    assert max(harness.checkpoint_steps(steps)) < RM_STEPS, f"killed at {point}: already done"
    assert not (workdir / folder / "model").exists()
    rerun = harness.run(stage, TINY, workdir, overrides, cache)
    assert re.search(r"resuming from \S+ at step [1-9]", rerun.stderr), f"killed at {point}: no resume"
    _assert_bit_identical(expected, _params(workdir / folder / "model"), f"{stage} killed at {point}")
  return full


def test_rm_killed_and_resumed_is_bit_identical(tmp_path, cache):
  data = _pairs(tmp_path / "prefs.jsonl", 24, hh=False)
  _training_kill_resume(tmp_path, cache, "rm", "rm", {
      "rm.ai_data": data, "rm.num_steps": RM_STEPS, "rm.checkpoint_every": 1,
      "rm.eval_every": 4, "rm.max_len": 64, "rm.batch_size": 8, "rm.optim.lr": 1e-3})


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory, cache) -> pathlib.Path:
  """harmless-rm's kill/resume check; its unbroken run's model is eval-harmless's evaluator."""
  tmp_path = tmp_path_factory.mktemp("harmless_rm")
  data = _pairs(tmp_path / "hh.jsonl", 24, hh=True)
  full = _training_kill_resume(tmp_path, cache, "harmless-rm", "harmless_rm", {
      "harmless.data": data, "harmless.num_steps": RM_STEPS, "harmless.checkpoint_every": 1,
      "harmless.eval_every": 4, "harmless.max_len": 64, "harmless.batch_size": 8,
      "harmless.eval_fraction": 0.25, "harmless.optim.lr": 1e-3})
  return full / "harmless_rm" / "model"


def test_harmless_rm_killed_and_resumed_is_bit_identical(evaluator):
  from cai_jax.models import reward as reward_model
  assert (evaluator / reward_model.CONFIG_FILE).is_file()  # the checks ran in the fixture


# ----------------------------------------------------------------------------- generation stages


def _records(workdir: pathlib.Path, name: str) -> list:
  """The records of output `name`, with the workdir's path (which some records name) as <w>."""
  text = json.dumps(harness.read_jsonl(workdir / name))
  return json.loads(text.replace(json.dumps(str(workdir))[1:-1], "<w>"))


def _generation_kill_resume(tmp_path, cache, stage: str, overrides: dict, progress: str,
                            total_lines: int, outputs: list[str], resumed: str) -> None:
  """Unbroken run, then two runs killed once the files matching `progress` (a glob under the
  workdir) hold a seeded number of complete lines (< total_lines), and rerun: the rerun logs
  `resumed` (a regex: it kept what was on disk) and every file in `outputs` equals the
  unbroken run's (paths inside the workdir compared relative to it)."""
  full = tmp_path / "full"
  harness.run(stage, TINY, full, overrides, cache)
  expected = {name: _records(full, name) for name in outputs}
  for point in harness.kill_points(SEED, 1, total_lines - 1, 2):
    workdir = tmp_path / f"killed_at_{point}"
    harness.run_and_kill(stage, TINY, workdir, overrides, cache,
                         lambda: sum(map(harness.complete_lines, workdir.glob(progress))) >= point,
                         f"after {point} lines of {progress}")
    rerun = harness.run(stage, TINY, workdir, overrides, cache)
    assert re.search(resumed, rerun.stderr), f"{stage} killed at {point}: did not resume"
    for name in outputs:
      got = _records(workdir, name)
      assert len({json.dumps(r, sort_keys=True) for r in got}) == len(got), f"{name}: duplicates"
      assert got == expected[name], f"{stage} killed at {point}: {name} differs"
    partials = sorted(p.name for p in (workdir / pathlib.Path(outputs[0]).parent).glob(".*partial*"))
    assert partials == [], partials


def test_sl_data_killed_and_resumed_writes_the_same_records(tmp_path, cache):
  # 6 red-team + 2 helpful prompts in batches of 2: the shard's settings line, then four
  # appends; host 0 merges the shard into sl_cai.jsonl at the end.
  _generation_kill_resume(tmp_path, cache, "sl-data", {
      "sl_data.n_prompts": 6, "sl_data.n_helpful": 2, "sl_data.n_rounds": 1,
      "sl_data.n_few_shot": 1, "sampler.batch_size": 2, "sampler.max_new_tokens": 16},
      "sl_data/.sl_cai.partial.jsonl", 9, ["sl_data/sl_cai.jsonl"], r"[1-9]\d* already in")


def test_feedback_killed_and_resumed_writes_the_same_labels(tmp_path, cache):
  # 8 prompts in batches of 2, two principles each: the shard's settings line, then four
  # appends. Answers are seeded by prompt ids, so a resumed run draws the unbroken run's.
  _generation_kill_resume(tmp_path, cache, "feedback", {
      "feedback.n_prompts": 8, "feedback.k_principles": 2, "feedback.n_few_shot": 0,
      "sampler.batch_size": 2, "sampler.max_new_tokens": 16},
      "feedback/.feedback.partial.jsonl", 9, ["feedback/feedback.jsonl"], r"[1-9]\d* already in")


def test_audit_killed_and_resumed_writes_the_same_items(tmp_path, cache):
  # The battery of the "direct" family: 128 items answered in chunks of 32 (4 x batch 8), so
  # the partial file holds its settings line and then grows by 32 lines a chunk.
  _generation_kill_resume(tmp_path, cache, "audit", {
      "audit.families": "direct", "audit.items_per_family": 3, "audit.max_new_tokens": 8,
      "sampler.batch_size": 8},
      "audit/.answers_*.partial.jsonl", 129, ["audit/items.jsonl"], r"[1-9]\d* answers on disk")


def test_eval_safety_killed_and_resumed_writes_the_same_answers(tmp_path, cache):
  # 12 prompts, 4 per chunk (sampler.batch_size 1): each model's partial file grows by 4
  # lines a chunk after its settings line; two models, so a kill can land in either's answers.
  _generation_kill_resume(tmp_path, cache, "eval-safety", {
      "safety.limit": 12, "safety.max_new_tokens": 24, "sampler.batch_size": 1,
      "safety.models": "random"},
      "safety/.answers_*.partial.jsonl", 26,
      ["safety/answers_0_random_tiny.jsonl", "safety/answers_1_random_tiny.jsonl"],
      r"[1-9]\d* answers on disk")


def test_eval_harmless_killed_and_resumed_writes_the_same_answers(tmp_path, cache, evaluator):
  from flax import nnx

  from cai_jax import weights
  from cai_jax.models import Transformer, get_model_config
  from cai_jax.tokenizer import ByteTokenizer
  cfg = get_model_config("tiny")  # another random model, scored against config.model
  policy = weights.export_hf(tmp_path / "policy", cfg,
                             nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(1)))),
                             ByteTokenizer())
  _generation_kill_resume(tmp_path, cache, "eval-harmless", {
      "harmless.model": evaluator, "harmless.policy": policy, "harmless.n_prompts": 12,
      "harmless.max_new_tokens": 24, "sampler.batch_size": 1},
      "harmless/.answers_*.partial.jsonl", 26, ["harmless/answers.jsonl"], r"[1-9]\d* answers on disk")
