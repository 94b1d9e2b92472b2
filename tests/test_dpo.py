"""Direct preference optimisation: the losses against NumPy, answer log-probs, data, the stage
(learns a marker preference, resumes bit-identically after SIGKILL) and the pipeline with dpo."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import config as config_lib
from cai_jax import sharding, weights
from cai_jax.config import optim_section
from cai_jax.data import preferences as prefs
from cai_jax.losses import get_loss
from cai_jax.models.load import ModelSpec, load_model
from cai_jax.sampling import engine
from cai_jax.stages import dpo as dpo_stage
from cai_jax.stages import pipeline
from cai_jax.tokenizer import ByteTokenizer, ChatTemplate
from cai_jax.train import dpo
from cai_jax.train.state import init_train_state, make_optimizer

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = "#"

# ----------------------------------------------------------------------------- losses vs NumPy

P = np.array([1.0, 0.0, 0.7, 0.5, 0.2, 0.9])
WEIGHT = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # the last row is padding
CFG = {"beta": 0.5, "tau": 0.25, "label_noise": 0.2}


def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_dpo(h, p, c):
  s = np.sign(p - 0.5)
  x = c["beta"] * s * h
  return -np.log(_sig(x)), -c["beta"] * s * _sig(-x), np.abs(s)


def _np_soft_dpo(h, p, c):
  x = c["beta"] * h
  value = -(p * np.log(_sig(x)) + (1 - p) * np.log(_sig(-x)))
  return value, -c["beta"] * (p - _sig(x)), np.ones_like(p)


def _np_ipo(h, p, c):
  t = 1 / (2 * c["tau"])
  return p * (h - t) ** 2 + (1 - p) * (h + t) ** 2, 2 * (h - (2 * p - 1) * t), np.ones_like(p)


def _np_robust_dpo(h, p, c):
  s, eps = np.sign(p - 0.5), c["label_noise"]
  x = c["beta"] * s * h
  value = ((1 - eps) * -np.log(_sig(x)) + eps * np.log(_sig(-x))) / (1 - 2 * eps)
  d_dx = (-(1 - eps) * _sig(-x) - eps * _sig(x)) / (1 - 2 * eps)
  return value, c["beta"] * s * d_dx, np.abs(s)


# name -> (h, p, cfg) -> (per-pair loss, its derivative in h, which pairs count)
NUMPY_LOSSES = {"dpo": _np_dpo, "soft_dpo": _np_soft_dpo, "ipo": _np_ipo, "robust_dpo": _np_robust_dpo}


def _outputs(seed=0):
  rng = np.random.default_rng(seed)
  names = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
  return {k: rng.normal(-20.0, 3.0, len(P)).astype(np.float32) for k in names}


@pytest.mark.parametrize("name", sorted(NUMPY_LOSSES))
def test_loss_value_and_gradient_match_numpy(name):
  out = _outputs()
  h = ((out["policy_chosen"] - out["ref_chosen"]).astype(np.float64)
       - (out["policy_rejected"] - out["ref_rejected"]))
  per, d_per, counts = NUMPY_LOSSES[name](h, P, CFG)
  w = WEIGHT * counts
  batch = {"p": jnp.asarray(P, jnp.float32), "weight": jnp.asarray(WEIGHT, jnp.float32)}
  loss_fn = get_loss(name)
  value, grads = jax.value_and_grad(lambda o: loss_fn(o, batch, CFG).total)(
      {k: jnp.asarray(v) for k, v in out.items()})
  np.testing.assert_allclose(float(value), (per * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(grads["policy_chosen"], d_per * w / w.sum(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads["policy_rejected"], -d_per * w / w.sum(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads["ref_chosen"], -d_per * w / w.sum(), rtol=1e-4, atol=1e-7)


def test_implicit_reward_metrics_are_seen_from_the_preferred_answer():
  out = _outputs(1)
  first = out["policy_chosen"].astype(np.float64) - out["ref_chosen"]
  second = out["policy_rejected"].astype(np.float64) - out["ref_rejected"]
  batch = {"p": jnp.asarray(P, jnp.float32), "weight": jnp.asarray(WEIGHT, jnp.float32)}
  m = get_loss("soft_dpo")({k: jnp.asarray(v) for k, v in out.items()}, batch, CFG).metrics
  s = np.sign(P - 0.5)
  decided = (WEIGHT * np.abs(s)) > 0  # rows 0, 1, 2, 4
  beta = CFG["beta"]
  winner, loser = np.where(s >= 0, first, second), np.where(s >= 0, second, first)
  np.testing.assert_allclose(float(m["reward_margin"]), np.mean((beta * s * (first - second))[decided]),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["reward_chosen"]), np.mean(beta * winner[decided]), rtol=1e-5)
  np.testing.assert_allclose(float(m["reward_rejected"]), np.mean(beta * loser[decided]), rtol=1e-5)
  assert float(m["reward_accuracy"]) == pytest.approx(np.mean((winner > loser)[decided]))


def test_soft_dpo_with_hard_labels_is_dpo_and_robust_dpo_without_noise_is_dpo():
  out = {k: jnp.asarray(v) for k, v in _outputs(2).items()}
  hard = {"p": jnp.asarray([1.0, 0.0, 1.0, 0.0]), "weight": jnp.ones(4)}
  out = {k: v[:4] for k, v in out.items()}
  base = float(get_loss("dpo")(out, hard, CFG).total)
  assert float(get_loss("soft_dpo")(out, hard, CFG).total) == pytest.approx(base, rel=1e-6)
  no_noise = dict(CFG, label_noise=0.0)
  assert float(get_loss("robust_dpo")(out, hard, no_noise).total) == pytest.approx(base, rel=1e-6)


# ----------------------------------------------------------------------------- log-probs and data


def _tiny(mesh=None, template="chatml"):
  return load_model(ModelSpec(source="random", preset="tiny", tokenizer="bytes", chat_template=template),
                    mesh, rules="train")


def test_pair_logprobs_equal_full_logits_read_in_chunks(monkeypatch):
  """The chunked read-out (forced to 4 chunks) gives the sums of engine.sequence_logprobs."""
  model = _tiny()
  rng = np.random.default_rng(0)
  B, L = 2, 32
  batch = {"tokens_a": rng.integers(0, 256, (B, L)).astype(np.int32),
           "tokens_b": rng.integers(0, 256, (B, L)).astype(np.int32),
           "mask_a": np.zeros((B, L), np.int32), "mask_b": np.zeros((B, L), np.int32)}
  batch["mask_a"][0, 5:20], batch["mask_a"][1, 9:32], batch["mask_b"][:, 3:12] = 1, 1, 1
  monkeypatch.setattr(dpo, "CHUNK_TOKENS", 2 * B * 8)
  got = np.asarray(jax.jit(dpo.pair_logprobs, static_argnums=0)(model.graphdef, model.params, batch))
  pos = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
  for j, side in enumerate("ab"):
    full = jax.jit(engine.sequence_logprobs)(model.module(), batch[f"tokens_{side}"], pos,
                                             batch[f"mask_{side}"].astype(bool))
    np.testing.assert_allclose(got[:, j], np.asarray(full).sum(axis=1), rtol=1e-5)


def test_encode_answer_masks_the_prompt_and_keeps_the_answer_start():
  tok, chat = ByteTokenizer(), ChatTemplate("chatml")
  conv = (("user", "hi"), ("assistant", "yo"))
  ids, start = dpo.encode_answer(conv, tok, chat, 64)
  prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert start == len(prompt)
  assert ids.tolist() == prompt + [ord("y"), ord("o"), tok.token_to_id("<|im_end|>")]
  short, s2 = dpo.encode_answer(conv, tok, chat, 8)  # prompt cut from the left, answer whole
  assert short.tolist() == ids.tolist()[-8:] and s2 == 5
  enc = dpo.encode_pair(prefs.Pair("x", conv, conv[:1] + (("assistant", "no!"),), 1.0, "ai"), tok, chat, 64)
  b = dpo.pair_batch([enc], 2, tok.pad_id, 64, ref=np.array([[-1.0, -2.0]], np.float32))
  assert b["tokens_a"].shape == (2, 32) and b["weight"].tolist() == [1.0, 0.0]
  assert b["mask_a"][0].tolist() == [0] * start + [1] * 3 + [0] * (32 - start - 3)
  assert b["mask_b"][0].sum() == 4 and b["ref_b"].tolist() == [-2.0, 0.0]
  with pytest.raises(ValueError, match="pair q \\(a\\): expected a conversation ending in the assistant"):
    dpo.encode_pair(prefs.Pair("q", conv[:1], conv, 1.0, "ai"), tok, chat, 64)


def test_pairs_are_oriented_and_batches_are_seeded_epochs():
  pair = prefs.Pair("x", (("user", "q"), ("assistant", "a")), (("user", "q"), ("assistant", "b")), 0.25, "ai")
  flipped = dpo.oriented(pair)
  assert (flipped.a, flipped.b, flipped.p_a) == (pair.b, pair.a, 0.75)
  rows = np.concatenate([dpo.batch_indices(10, 4, seed=3, step=s) for s in range(5)])  # 2 epochs
  assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
  assert dpo.batch_indices(10, 4, seed=3, step=3).tolist() == rows[12:16].tolist()


def test_reference_logprobs_are_computed_once_and_checked(tmp_path):
  tok, chat = ByteTokenizer(), ChatTemplate("chatml")
  conv = lambda t: (("user", "q"), ("assistant", t))  # noqa: E731
  pairs = [dpo.encode_pair(prefs.Pair(str(i), conv("a" * i), conv("b"), 1.0, "ai"), tok, chat, 64)
           for i in range(1, 4)]
  path = tmp_path / dpo.REFERENCE_FILE
  values = np.arange(6, dtype=np.float32).reshape(3, 2)
  got = dpo.stored_reference_logprobs(path, pairs, "ref", lambda: values)
  np.testing.assert_array_equal(got, values)

  def must_not_run():
    raise AssertionError("recomputed")
  np.testing.assert_array_equal(dpo.stored_reference_logprobs(path, pairs, "ref", must_not_run), values)
  with pytest.raises(ValueError, match="reference log-probs of other pairs or another reference"):
    dpo.stored_reference_logprobs(path, pairs[:2], "ref", must_not_run)


def test_dpo_step_raises_the_chosen_answer_and_lowers_the_rejected():
  mesh = sharding.make_mesh({"data": 2, "tensor": 2, "fsdp": 2})
  model = _tiny(mesh)
  tok, chat = model.tokenizer, model.chat
  user = ("user", "Which is better?")
  pairs = [dpo.encode_pair(prefs.Pair(str(i), (user, ("assistant", f"answer {i} is fine")),
                                      (user, ("assistant", f"answer {i} is bad")), 1.0, "ai"), tok, chat, 64)
           for i in range(4)]
  before = dpo.score_pairs(model.graphdef, model.params, pairs, batch_size=4, pad_id=tok.pad_id,
                           max_len=64, mesh=mesh)
  tx = make_optimizer(optim_section(name="sgd", lr=1e-2, grad_clip=0.0))
  p_shard = jax.tree.map(lambda x: x.sharding, model.params)
  state, s_shard = init_train_state(model.params, p_shard, tx, jax.random.key(0), mesh)
  step = dpo.make_dpo_step(graphdef=model.graphdef, tx=tx, state_shardings=s_shard, mesh=mesh,
                           loss="dpo", loss_cfg={"beta": 0.1})
  state, metrics = step(state, sharding.shard_batch(dpo.pair_batch(pairs, 4, tok.pad_id, 64, before), mesh))
  after = dpo.score_pairs(model.graphdef, state.params, pairs, batch_size=4, pad_id=tok.pad_id,
                          max_len=64, mesh=mesh)
  assert float(metrics["loss"]) == pytest.approx(np.log(2.0), rel=1e-5)  # policy == reference: h = 0
  assert (after[:, 0] > before[:, 0]).all() and (after[:, 1] < before[:, 1]).all(), (before, after)


# ----------------------------------------------------------------------------- the stage


def _marker_file(path: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
  """Pairs of random lowercase answers; one side holds the marker and is preferred (p = 0.9 or 0.1)."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
  lines = []
  for i in range(n):
    a, b = ("".join(rng.choice(letters, rng.integers(6, 14))) for _ in range(2))
    a_wins = rng.random() < 0.5
    k = rng.integers(0, 6)
    a, b = (a[:k] + MARKER + a[k:], b) if a_wins else (a, b[:k] + MARKER + b[k:])
    lines.append(json.dumps({"id": f"m{i}", "prompt": "".join(rng.choice(letters, 6)), "response_a": a,
                             "response_b": b, "p_a": 0.9 if a_wins else 0.1}))
  path.write_text("\n".join(lines) + "\n")
  return path


def _stage_overrides(workdir, data, **more):
  # max_len 32 < every pair's length: one padded shape, one compilation per function.
  out = {"workdir": str(workdir), "dpo.data": str(data), "dpo.max_len": 32, "dpo.batch_size": 16,
         "dpo.num_steps": 20, "dpo.eval_fraction": 0.2, "dpo.eval_every": 10, "dpo.checkpoint_every": 20,
         "dpo.log_every": 0, "dpo.beta": 0.5, "dpo.optim.lr": 3e-3, "dpo.optim.warmup_steps": 2}
  out.update(more)
  return out


def _tiny_config(overrides):
  spec = importlib.util.spec_from_file_location("tiny", REPO / "experiments" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.apply_overrides(config, overrides)
  return config_lib.validate(config)


def test_dpo_stage_learns_a_marker_preference(tmp_path):
  data = _marker_file(tmp_path / "prefs.jsonl", 320)
  summary = dpo_stage.run(_tiny_config(_stage_overrides(tmp_path / "run", data)))
  held = summary["eval"]
  assert summary["steps"] == 20 and summary["n_heldout"] == held["n"] > 40
  # Measured 1.0 (a policy equal to its reference scores 0: ties count wrong).
  assert held["reward_accuracy"] > 0.9, summary
  assert held["reward_margin"] > 0 and summary["last_loss"] < summary["first_loss"]
  run = tmp_path / "run" / "dpo"
  written = {p.name for p in run.iterdir()}
  assert {"hf", "curves.png", dpo.REFERENCE_FILE, "checkpoints", "metrics.jsonl"} <= written
  cfg, _ = weights.load_safetensors(run / "hf")
  assert cfg.vocab_size == 264
  # A rerun with another beta is refused, naming the field, before any model loads.
  changed = _stage_overrides(tmp_path / "run", data, **{"dpo.beta": 0.25})
  with pytest.raises(ValueError, match=r"training.beta: 0.5 -> 0.25"):
    dpo_stage.run(_tiny_config(changed))


def _cli(workdir, data):
  overrides = _stage_overrides(workdir, data, **{"dpo.num_steps": 12, "dpo.checkpoint_every": 1,
                                                 "dpo.eval_every": 6, "dpo.batch_size": 8})
  return [sys.executable, "-m", "cai_jax", "dpo", "--config", "experiments/tiny.py"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]


def _env(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),  # only the first run compiles
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _checkpoints(workdir):
  d = workdir / "dpo" / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  data = _marker_file(tmp_path / "prefs.jsonl", 64)
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_cli(full, data), cwd=REPO, env=_env(tmp_path), check=True, capture_output=True)
  proc = subprocess.Popen(_cli(killed, data), cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  while proc.poll() is None and len(_checkpoints(killed)) < 2:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert max(_checkpoints(killed)) < 12 and (killed / "dpo" / dpo.REFERENCE_FILE).is_file()
  subprocess.run(_cli(killed, data), cwd=REPO, env=_env(tmp_path), check=True, capture_output=True)
  _, params_full = weights.load_safetensors(full / "dpo" / "hf")
  _, params_resumed = weights.load_safetensors(killed / "dpo" / "hf")
  leaves_a, leaves_b = jax.tree.leaves(params_full), jax.tree.leaves(params_resumed)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)


def test_pipeline_can_run_dpo_in_place_of_rm_and_ppo(tmp_path):
  from cai_jax.layout import RunLayout
  stages = ["sl-data", "sft", "feedback", "dpo"]
  spec = importlib.util.spec_from_file_location("quickstart", REPO / "experiments" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {
      "workdir": str(tmp_path), "pipeline.stages": ",".join(stages), "mesh.data": 4, "mesh.tensor": 2,
      "sl_data.n_prompts": 2, "sl_data.n_helpful": 1, "sl_data.n_rounds": 1, "sampler.max_new_tokens": 8,
      "sft.num_steps": 1, "sft.eval_fraction": 0.0, "sft.checkpoint_every": 1, "feedback.n_prompts": 4,
      "dpo.num_steps": 2, "dpo.batch_size": 4, "dpo.max_len": 128, "dpo.eval_fraction": 0.0,
      "dpo.checkpoint_every": 2, "dpo.loss": "soft_dpo", "pipeline.isolate": False})
  summaries = pipeline.run(config_lib.validate(config))
  assert list(summaries) == stages + ["timing_s", "peak_rss_gb"]
  s = summaries["dpo"]
  assert s["steps"] == 2 and s["n_train"] == 4 and s["policy"] == str(tmp_path / "sft" / "hf")
  assert s["export_hf"] == str(tmp_path / "dpo" / "hf")
  for folder, entries in RunLayout.expected_tree(stages).items():
    found = {p.name + ("/" if p.is_dir() else "") for p in (tmp_path / folder).iterdir()}
    assert found == entries, folder
