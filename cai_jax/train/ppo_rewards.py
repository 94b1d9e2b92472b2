"""Reward functions for PPO: `reward_fn(tokens [B, L], mask [B, L]) -> scores [B]`.

`mask` marks each row's response; the prompt sits before it. Two kinds:
the trained reward model (stage `rm`), scored at the last response token, and
a synthetic one (a count of target tokens) for tests and smoke runs, whose
optimum is known in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def last_response_index(mask: np.ndarray) -> np.ndarray:
  """[B] index of each row's last response token (0 for an empty response)."""
  mask = np.asarray(mask, bool)
  idx = np.where(mask, np.arange(mask.shape[1])[None, :], -1).max(axis=1)
  return np.maximum(idx, 0).astype(np.int32)


def token_count_reward(target_ids: Sequence[int]):
  """Score = number of response tokens whose id is in target_ids."""
  targets = np.asarray(sorted(set(int(t) for t in target_ids)), np.int64)
  if targets.size == 0:
    raise ValueError("token_count_reward: target_ids is empty")

  def reward_fn(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hits = np.isin(np.asarray(tokens), targets) & np.asarray(mask, bool)
    return hits.sum(axis=1).astype(np.float32)

  return reward_fn


def reward_model_fn(score_fn, graphdef, params, *, mesh=None, batch_size: int = 8):
  """Adapter from a reward model's `score_fn(graphdef, params, tokens, positions,
  last_index) -> [B]` (train/reward.py's `reward_scores`) to a reward_fn. The
  score is read at the last response token; rows go through in chunks of
  batch_size (a multiple of the mesh's data shards)."""
  import jax

  from cai_jax import sharding

  score_jit = jax.jit(score_fn, static_argnums=0)  # one compiled program per chunk shape

  def reward_fn(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens, np.int32)
    last = last_response_index(mask)
    out = []
    for start in range(0, len(tokens), batch_size):
      chunk = dict(tokens=tokens[start:start + batch_size], last=last[start:start + batch_size])
      n = len(chunk["tokens"])
      if n < batch_size:  # pad the last chunk to a full batch: one compiled shape
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, 0)]) for k, v in
                 chunk.items()}
      positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), chunk["tokens"].shape)
      chunk["positions"] = positions
      if mesh is not None:
        chunk = sharding.shard_global_batch(chunk, mesh)  # every host holds the whole rollout
      scores = score_jit(graphdef, params, chunk["tokens"], chunk["positions"], chunk["last"])
      out.append(np.asarray(sharding.to_host(scores), np.float32)[:n])
    return np.concatenate(out)

  return reward_fn
