"""Reward model: learns a synthetic preference (marker token) on the tiny model; metrics; stage."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from cai_jax import sharding
from cai_jax.data import preferences as prefs
from cai_jax.tokenizer import ByteTokenizer, ChatTemplate
from cai_jax.models import reward as reward_model
from cai_jax.train import reward
from cai_jax.config import optim_section
from cai_jax.train.state import init_train_state, make_optimizer

MARKER = "#"


def _synthetic_pairs(n, seed):
  """Pairs of random lowercase answers; exactly one side contains the marker, which is preferred."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
  pairs = []
  for i in range(n):
    prompt = "".join(rng.choice(letters, 6))
    a, b = ("".join(rng.choice(letters, rng.integers(6, 14))) for _ in range(2))
    a_wins = rng.random() < 0.5
    good = a if a_wins else b
    k = rng.integers(0, len(good) + 1)
    good = good[:k] + MARKER + good[k:]
    a, b = (good, b) if a_wins else (a, good)
    user = ("user", prompt)
    pairs.append(prefs.Pair(f"s{seed}-{i}", (user, ("assistant", a)), (user, ("assistant", b)),
                            1.0 if a_wins else 0.0, "ai"))
  return pairs


def test_reward_model_learns_marker_preference(tiny_cfg, tmp_path):
  mesh = sharding.make_mesh({"data": 4, "tensor": 2})
  tok, chat = ByteTokenizer(), ChatTemplate("transcript")
  graphdef, params, p_shard = reward_model.build_reward_model(tiny_cfg, mesh, seed=0)
  steps = 120
  tx = make_optimizer(optim_section(lr=3e-3, warmup_steps=10), steps)
  state, s_shard = init_train_state(params, p_shard, tx, jax.random.key(0), mesh)
  step_fn = reward.make_rm_step(graphdef=graphdef, tx=tx, state_shardings=s_shard, mesh=mesh)
  train, held = _synthetic_pairs(512, 0), _synthetic_pairs(128, 1)
  stream = prefs.mixed_batches(train, [], 0.0, 16, seed=0)
  for _ in range(steps):
    batch = prefs.make_batch(next(stream), tok, chat, 64, 16, tok.pad_id)
    state, metrics = step_fn(state, sharding.shard_batch(batch, mesh))
  d = reward.score_pairs(graphdef, state.params, held, tok, chat, max_len=64, batch_size=16, mesh=mesh)
  cal = reward.calibration(d, [p.p_a for p in held])
  assert cal["accuracy"] > 0.9, cal
  assert float(metrics["accuracy"]) > 0.8
  # Saved and loaded back, the model scores the held-out pairs the same.
  reward_model.save_reward_model(tmp_path / "model", tiny_cfg, state.params)
  graphdef2, params2 = reward_model.load_reward_model(tmp_path / "model", mesh)
  d2 = reward.score_pairs(graphdef2, params2, held, tok, chat, max_len=64, batch_size=16, mesh=mesh)
  np.testing.assert_allclose(d2, d, rtol=1e-5, atol=1e-5)


def test_scores_are_read_at_last_index(tiny_cfg):
  """reward_scores = ScalarHead(trunk hidden) at last_index, unaffected by padding after it."""
  model = reward_model.RewardModel(tiny_cfg, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (2, 12)).astype(np.int32)
  pos = np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))
  last = np.array([5, 11], np.int32)
  got = np.asarray(reward_model.reward_scores(graphdef, params, tokens, pos, last))
  hidden, _ = model.trunk.hidden(tokens, pos)
  full = np.asarray(model.head(hidden))
  np.testing.assert_allclose(got, full[[0, 1], last], rtol=1e-5, atol=1e-6)
  tokens2 = tokens.copy()
  tokens2[0, 6:] = 0
  got2 = np.asarray(reward_model.reward_scores(graphdef, params, tokens2, pos, last))
  np.testing.assert_allclose(got2[0], got[0], rtol=1e-5, atol=1e-6)


def test_calibration_metrics_match_definitions():
  d = np.array([2.0, -1.0, 0.5, 3.0, -0.2])
  p = np.array([1.0, 0.0, 0.0, 0.5, 0.8])
  q = 1 / (1 + np.exp(-d))
  cal = reward.calibration(d, p, n_bins=5)
  # decided pairs: rows 0, 1 (right), 2 (d > 0 but p = 0: wrong), 4 (d < 0 but p > 0.5: wrong)
  assert cal["accuracy"] == pytest.approx(2 / 4)
  assert cal["brier"] == pytest.approx(np.mean((q - p) ** 2))
  conf = np.maximum(q, 1 - q)[[0, 1, 2, 4]]
  right = np.array([1, 1, 0, 0], float)
  bins = np.clip(np.floor((conf - 0.5) / 0.1).astype(int), 0, 4)
  ece = sum(abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum()
            for b in range(5) if (bins == b).any()) / 4
  assert cal["ece"] == pytest.approx(ece)


def test_preference_file_errors(tmp_path):
  path = tmp_path / "prefs.jsonl"
  good = {"id": "x", "prompt": "p", "response_a": "a", "response_b": "b", "p_a": 0.7,
          "principles": [], "source": "ai"}
  path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, p_a=1.5)) + "\n")
  with pytest.raises(ValueError, match="prefs.jsonl:2:p_a: expected a number in"):
    prefs.load_preference_jsonl(path)
  path.write_text(json.dumps(dict(good, response_b=None)) + "\n")
  with pytest.raises(ValueError, match="prefs.jsonl:1:response_b: expected a string"):
    prefs.load_preference_jsonl(path)
  assert prefs.parse_transcript("\n\nHuman: hi\n\nAssistant: hello there") == (
      ("user", "hi"), ("assistant", "hello there"))
  with pytest.raises(ValueError, match="f:3:chosen: expected a transcript"):
    prefs.parse_transcript("no turns here", "f:3:chosen")


def test_mixing_ratio_and_determinism():
  ai = [prefs.Pair(f"a{i}", (), (), 1.0, "ai") for i in range(10)]
  hu = [prefs.Pair(f"h{i}", (), (), 1.0, "human") for i in range(10)]
  s1 = prefs.mixed_batches(ai, hu, 0.25, 8, seed=3)
  batches = [next(s1) for _ in range(5)]
  assert all(sum(p.source == "human" for p in b) == 2 for b in batches)
  resumed = prefs.mixed_batches(ai, hu, 0.25, 8, seed=3, start_step=3)
  assert [p.id for p in next(resumed)] == [p.id for p in batches[3]]


def test_side_is_scored_at_the_end_of_turn():
  """Each side ends at the end-of-turn token (where PPO reads the reward) and keeps its last tokens."""
  tok = ByteTokenizer()
  conv = (("user", "hi"), ("assistant", "yo"))
  ids = prefs.encode_side(conv, tok, ChatTemplate("chatml"), 100)
  assert ids[-1] == tok.token_to_id("<|im_end|>")
  assert tok.decode(ids[-3:-1]) == "yo"
  assert prefs.encode_side(conv, tok, ChatTemplate("chatml"), 5) == ids[-5:]
  batch = prefs.make_batch([prefs.Pair("x", conv, conv[:1] + (("assistant", "no!"),), 1.0, "ai")],
                           tok, ChatTemplate("chatml"), 100, 2, tok.pad_id)
  assert batch["last_a"][0] == len(ids) - 1 and batch["last_b"][0] == len(ids)
  assert batch["tokens_a"].shape == (2, 32) and batch["weight"].tolist() == [1.0, 0.0]


def test_rm_step_counts_the_real_pairs_of_its_global_batch(tiny_cfg):
  """metrics["pairs"]: the batch's non-padding pairs (weight 1), so a run on many hosts can
  show that its global batch is the one-process batch and not one copy per host."""
  mesh = sharding.make_mesh({"data": 4, "tensor": 2})
  tok, chat = ByteTokenizer(), ChatTemplate("transcript")
  graphdef, params, p_shard = reward_model.build_reward_model(tiny_cfg, mesh, seed=0)
  tx = make_optimizer(optim_section(lr=1e-3), 1)
  state, s_shard = init_train_state(params, p_shard, tx, jax.random.key(0), mesh)
  step_fn = reward.make_rm_step(graphdef=graphdef, tx=tx, state_shardings=s_shard, mesh=mesh)
  batch = prefs.make_batch(_synthetic_pairs(5, 0), tok, chat, 32, 8, tok.pad_id)  # 3 padding rows
  _, metrics = step_fn(state, sharding.shard_global_batch(batch, mesh))
  assert float(metrics["pairs"]) == 5.0
