"""Reward-model training on preference pairs (the model itself: models/reward.py).

Loss: the registry's Bradley-Terry loss with soft labels p_a (`RMSettings.loss`).
`rm_step` is a pure function jitted by `make_rm_step` with explicit
NamedShardings and a donated state. `train_reward_model` mixes AI labels with
human comparisons at `human_fraction` per batch, holds out `eval_fraction` of
the pairs (accuracy, Brier score, ECE), trains through the shared loop
(checkpoints + resume) and saves the trained model for PPO and eval-hhh.

  python -m cai_jax rm --config experiments/embedded.py --config.rm.num_steps=50
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from cai_jax import sharding
from cai_jax.data import preferences as prefs
from cai_jax.losses import get_loss
from cai_jax.models.reward import build_reward_model, pair_rewards, save_reward_model
from cai_jax.train.state import TrainState, apply_gradients

log = logging.getLogger(__name__)


def rm_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: Any,
            tx: optax.GradientTransformation, loss_fn, loss_cfg: Mapping) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of pairs: pure (state, batch) -> (state, metrics)."""
  def loss_of(params):
    ra, rb = pair_rewards(graphdef, params, batch)
    out = loss_fn({"reward_a": ra, "reward_b": rb}, batch, loss_cfg)
    return out.total, out.metrics

  state, metrics = apply_gradients(state, loss_of, tx)
  # Real (non-padding) pairs in the global batch: the same on one host or many.
  return state, {**metrics, "pairs": batch["weight"].sum()}


BATCH_KEYS = {"tokens_a": 2, "tokens_b": 2, "last_a": 1, "last_b": 1, "p_a": 1, "weight": 1}


def make_rm_step(*, graphdef, tx, state_shardings: TrainState, mesh, loss: str = "bradley_terry",
                 loss_cfg: Mapping | None = None):
  """rm_step jitted with the state's shardings, batch sharded along data, state donated."""
  batch_sh = {k: sharding.batch_sharding(mesh, nd) for k, nd in BATCH_KEYS.items()}
  step = functools.partial(rm_step, graphdef=graphdef, tx=tx, loss_fn=get_loss(loss),
                           loss_cfg=dict(loss_cfg or {}))
  return jax.jit(step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def calibration(d: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, float]:
  """Held-out metrics from reward differences d = r_a - r_b and labels p_a.

  accuracy: decided pairs (p != 0.5) whose sign(d) agrees; brier: mean (sigma(d) - p)^2 over
  all pairs; ece: over decided pairs, bins of confidence max(q, 1 - q) (q = sigma(d)) in
  [0.5, 1], sum_bins n_b / N * |accuracy_b - confidence_b|.
  """
  d, p = np.asarray(d, np.float64), np.asarray(p, np.float64)
  q = 1.0 / (1.0 + np.exp(-d))
  decided = p != 0.5
  right = (np.sign(d) == np.sign(p - 0.5))[decided]
  conf = np.maximum(q, 1 - q)[decided]
  edges = np.linspace(0.5, 1.0, n_bins + 1)
  which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
  ece = sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).sum()
            for b in range(n_bins) if (which == b).any()) / max(decided.sum(), 1)
  return dict(accuracy=float(right.mean()) if right.size else float("nan"),
              brier=float(np.mean((q - p) ** 2)), ece=float(ece), n=int(len(d)))


def score_pairs(graphdef, params, pairs: Sequence[prefs.Pair], tokenizer, chat, *, max_len: int,
                batch_size: int, mesh) -> np.ndarray:
  """d = r_a - r_b for each pair (host numpy; every process gets all of them)."""
  # Replicated rewards: each host of a multi-host run can read the whole batch's.
  fn = jax.jit(functools.partial(pair_rewards, graphdef), out_shardings=sharding.replicated(mesh))
  out = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    batch = prefs.make_batch(chunk, tokenizer, chat, max_len, batch_size, tokenizer.pad_id)
    ra, rb = fn(params, sharding.shard_global_batch(batch, mesh))
    out.append((np.asarray(ra) - np.asarray(rb))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros(0)


@dataclasses.dataclass(frozen=True)
class RMSettings:
  """How to train the reward model (the `rm` stage fills it from config.rm)."""

  optim: Mapping[str, Any]  # train.state.make_optimizer's fields
  loss: str = "bradley_terry"
  max_len: int = 512
  batch_size: int = 8
  num_steps: int = 200
  human_fraction: float = 0.0
  eval_fraction: float = 0.1
  eval_every: int = 50
  checkpoint_every: int = 50
  keep: int = 3
  seed: int = 0


def train_reward_model(trunk, ai: Sequence[prefs.Pair], human: Sequence[prefs.Pair],
                       s: RMSettings, rm_dir: str | pathlib.Path, mesh) -> dict:
  """Trains a reward model on `trunk` (a LoadedModel: weights, tokenizer, chat) from AI and
  human pairs; checkpoints and metrics under rm_dir, the trained model in rm_dir/model.

  Resumes from rm_dir/checkpoints. Returns the held-out metrics (accuracy, Brier, ECE).
  """
  from cai_jax.train.checkpoint import Checkpointer
  from cai_jax.train.loop import restore_or_keep, run_loop
  from cai_jax.train.state import init_train_state, make_optimizer

  rm_dir = pathlib.Path(rm_dir)
  ai_train, ai_held = prefs.split_heldout(list(ai), s.eval_fraction, s.seed)
  hu_train, hu_held = prefs.split_heldout(list(human), s.eval_fraction, s.seed)
  log.info("rm: %d/%d AI and %d/%d human pairs (train/held-out)", len(ai_train), len(ai_held),
           len(hu_train), len(hu_held))
  graphdef, params, p_shard = build_reward_model(trunk.cfg, mesh, trunk.params, s.seed)
  tx = make_optimizer(s.optim, s.num_steps)
  # Donated: the trunk's weights move into the state instead of being copied (the caller's
  # `trunk.params` must not be used afterwards).
  state, s_shard = init_train_state(params, p_shard, tx, jax.random.key(s.seed), mesh, donate=True)
  ckpt = Checkpointer(rm_dir / "checkpoints", keep=s.keep)
  state, _ = restore_or_keep(ckpt, state, s_shard)
  rm_dir.mkdir(parents=True, exist_ok=True)
  step_fn = make_rm_step(graphdef=graphdef, tx=tx, state_shardings=s_shard, mesh=mesh, loss=s.loss)
  tok, chat = trunk.tokenizer, trunk.chat
  stream = prefs.mixed_batches(ai_train, hu_train, s.human_fraction, s.batch_size, s.seed,
                               start_step=int(state.step))
  # Every host draws the same global pairs (a function of seed and step) and places only
  # the rows its devices hold: the batches of one process, on any number of hosts.
  batches = (sharding.shard_global_batch(prefs.make_batch(ps, tok, chat, s.max_len, s.batch_size,
                                                          tok.pad_id), mesh) for ps in stream)
  held = ai_held + hu_held

  def eval_fn(st: TrainState) -> dict:
    metrics = {}
    for name, group in (("ai", ai_held), ("human", hu_held)):
      if group:
        d = score_pairs(graphdef, st.params, group, tok, chat, max_len=s.max_len,
                        batch_size=s.batch_size, mesh=mesh)
        metrics.update({f"{name}_{k}": v for k, v in calibration(d, [p.p_a for p in group]).items()})
    return metrics

  state = run_loop(state=state, step_fn=step_fn, batches=batches, num_steps=s.num_steps,
                   workdir=rm_dir, checkpointer=ckpt, eval_fn=eval_fn if held else None,
                   eval_every=s.eval_every, save_every=s.checkpoint_every, stage="rm",
                   tokens_in_batch=lambda b: int(2 * b["tokens_a"].size))
  ckpt.close()
  save_reward_model(rm_dir / "model", trunk.cfg, state.params)
  return dict(stage="rm", step=int(state.step), **(eval_fn(state) if held else {}))
