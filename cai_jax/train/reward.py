"""Reward model (Transformer trunk + ScalarHead) trained on preference pairs: stage `rm`.

Score of a sequence = ScalarHead(hidden) at its last token. Loss: the registry's
Bradley-Terry loss with soft labels p_a (config rm.loss). `rm_step` is a pure
function jitted by `make_rm_step` with explicit NamedShardings and a donated
state. The stage mixes AI labels (stage `feedback`) with hh-rlhf human
comparisons at rm.human_fraction per batch, holds out rm.eval_fraction of the
pairs (accuracy, Brier score, ECE), and trains through the shared loop
(checkpoints + resume in `<workdir>/rm/checkpoints`, metrics in `<workdir>/rm`).

  python -m cai_jax rm --config experiments/embedded.py --config.rm.num_steps=50

Public: `reward_scores(graphdef, params, tokens, positions, last_index) -> [B]`
and `load_reward_model(workdir, mesh) -> (graphdef, params)` (PPO, eval-hhh).
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cai_jax import sharding
from cai_jax.data import preferences as prefs
from cai_jax.losses import get_loss
from cai_jax.models import ScalarHead, Transformer
from cai_jax.train.state import TrainState

log = logging.getLogger(__name__)


class RewardModel(nnx.Module):
  """Transformer trunk + scalar head read at one position per row."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.trunk = Transformer(cfg, rngs=rngs)
    self.head = ScalarHead(cfg.d_model, rngs=rngs, param_dtype=cfg.param_dtype)

  def __call__(self, tokens: jax.Array, positions: jax.Array, last_index: jax.Array) -> jax.Array:
    """tokens, positions [B, T]; last_index [B] -> scores [B] (float32)."""
    hidden, _ = self.trunk.hidden(tokens, positions)  # [B, T, D]
    scores = self.head(hidden)  # [B, T]
    return jnp.take_along_axis(scores, last_index[:, None].astype(jnp.int32), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def reward_scores(graphdef, params, tokens: jax.Array, positions: jax.Array,
                  last_index: jax.Array) -> jax.Array:
  """Reward of each row [B] read at last_index [B] (tokens, positions [B, T])."""
  return nnx.merge(graphdef, params)(tokens, positions, last_index)


def build_reward_model(cfg, mesh, trunk_params: Any = None, seed: int = 0):
  """(graphdef, params, param shardings); the trunk takes `trunk_params` when given (e.g.
  the SFT policy's), else a random init; the head is always fresh (small random w, b = 0)."""
  graphdef, params, shard = sharding.init_sharded(lambda: RewardModel(cfg, rngs=nnx.Rngs(seed)),
                                                  mesh, "train")
  if trunk_params is not None:
    params = dict(params, trunk=sharding.reshard(trunk_params, shard["trunk"]))
  return graphdef, params, shard


def _positions(tokens: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def pair_rewards(graphdef, params, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(reward_a [B], reward_b [B]) in one forward pass over the 2B sequences."""
  tokens = jnp.concatenate([batch["tokens_a"], batch["tokens_b"]], axis=0)  # [2B, L]
  last = jnp.concatenate([batch["last_a"], batch["last_b"]], axis=0)  # [2B]
  r = nnx.merge(graphdef, params)(tokens, _positions(tokens), last)  # [2B]
  n = batch["tokens_a"].shape[0]
  return r[:n], r[n:]


def rm_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: Any,
            tx: optax.GradientTransformation, loss_fn, loss_cfg: Mapping) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of pairs: pure (state, batch) -> (state, metrics)."""
  def loss_of(params):
    ra, rb = pair_rewards(graphdef, params, batch)
    out = loss_fn({"reward_a": ra, "reward_b": rb}, batch, loss_cfg)
    return out.total, out.metrics

  (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


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
  """d = r_a - r_b for each pair (host numpy)."""
  fn = jax.jit(functools.partial(pair_rewards, graphdef))
  out = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    batch = prefs.make_batch(chunk, tokenizer, chat, max_len, batch_size, tokenizer.pad_id)
    ra, rb = fn(params, sharding.shard_batch(batch, mesh))
    out.append((np.asarray(ra) - np.asarray(rb))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros(0)


def _optim(c) -> dict:
  from cai_jax.train.state import optim_section
  return optim_section(lr=c.lr, warmup_steps=c.warmup_steps, weight_decay=c.weight_decay,
                       grad_clip=c.grad_clip).to_dict()


def _resolve(path: str, workdir: pathlib.Path) -> str:
  if not path or pathlib.Path(path).exists():
    return path
  return str(workdir / path)


def _model_section(config):
  section = config.model.copy_and_resolve_references()
  if config.rm.init:
    with section.unlocked():
      section.source, section.preset = config.rm.init, ""
  return section


def train_reward_model(config) -> dict:
  """Stage `rm`: trains, evaluates on the held-out split, writes <workdir>/rm/summary.json."""
  from cai_jax.models.load import load_model
  from cai_jax.train.checkpoint import Checkpointer
  from cai_jax.train.loop import restore_or_keep, run_loop
  from cai_jax.train.state import init_train_state, make_optimizer

  c, workdir = config.rm, pathlib.Path(config.workdir)
  rm_dir = workdir / "rm"
  mesh = sharding.make_mesh(dict(config.mesh))
  loaded = load_model(_model_section(config), mesh, rules="train")
  ai = prefs.load_preference_jsonl(_resolve(c.ai_data, workdir)) if c.ai_data else []
  human = prefs.load_hh_pairs(c.human_data, c.n_human, c.seed) if c.human_data else []
  ai_train, ai_held = prefs.split_heldout(ai, c.eval_fraction, c.seed)
  hu_train, hu_held = prefs.split_heldout(human, c.eval_fraction, c.seed)
  log.info("rm: %d/%d AI and %d/%d human pairs (train/held-out)", len(ai_train), len(ai_held),
           len(hu_train), len(hu_held))
  graphdef, params, p_shard = build_reward_model(loaded.cfg, mesh, loaded.params, c.seed)
  tx = make_optimizer(_optim(c), c.num_steps)
  state, s_shard = init_train_state(params, p_shard, tx, jax.random.key(c.seed), mesh)
  ckpt = Checkpointer(rm_dir / "checkpoints", keep=c.keep)
  state, _ = restore_or_keep(ckpt, state, s_shard)
  rm_dir.mkdir(parents=True, exist_ok=True)
  (rm_dir / "rm_config.json").write_text(json.dumps(
      {"model": _model_section(config).to_dict(), "rm": c.to_dict(), "mesh": config.mesh.to_dict()},
      indent=1))
  step_fn = make_rm_step(graphdef=graphdef, tx=tx, state_shardings=s_shard, mesh=mesh, loss=c.loss)
  tok, chat = loaded.tokenizer, loaded.chat
  stream = prefs.mixed_batches(ai_train, hu_train, c.human_fraction, c.batch_size, c.seed,
                               start_step=int(state.step))
  batches = (sharding.shard_batch(prefs.make_batch(ps, tok, chat, c.max_len, c.batch_size,
                                                   tok.pad_id), mesh) for ps in stream)
  held = ai_held + hu_held

  def eval_fn(s: TrainState) -> dict:
    metrics = {}
    for name, group in (("ai", ai_held), ("human", hu_held)):
      if group:
        d = score_pairs(graphdef, s.params, group, tok, chat, max_len=c.max_len,
                        batch_size=c.batch_size, mesh=mesh)
        metrics.update({f"{name}_{k}": v for k, v in calibration(d, [p.p_a for p in group]).items()})
    return metrics

  state = run_loop(state=state, step_fn=step_fn, batches=batches, num_steps=c.num_steps,
                   workdir=rm_dir, checkpointer=ckpt, eval_fn=eval_fn if held else None,
                   eval_every=c.eval_every, save_every=c.checkpoint_every, stage="rm",
                   tokens_in_batch=lambda b: int(2 * b["tokens_a"].size))
  summary = dict(stage="rm", step=int(state.step), **(eval_fn(state) if held else {}))
  (rm_dir / "summary.json").write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary), flush=True)
  return summary


run = train_reward_model


def load_reward_model(workdir, mesh=None) -> tuple[Any, Any]:
  """(graphdef, params) of the latest `rm` checkpoint under `workdir` (the experiment's
  workdir or its rm/ folder); params placed for `mesh` (default: all devices, data axis)."""
  from ml_collections import ConfigDict

  from cai_jax.models.load import load_model
  from cai_jax.train.checkpoint import Checkpointer
  from cai_jax.train.state import abstract_state, make_optimizer, state_shardings

  rm_dir = pathlib.Path(workdir)
  if not (rm_dir / "rm_config.json").exists():
    rm_dir = rm_dir / "rm"
  if not (rm_dir / "rm_config.json").exists():
    raise FileNotFoundError(f"{workdir}: no rm_config.json here or in rm/; run stage `rm` first")
  saved = json.loads((rm_dir / "rm_config.json").read_text())
  mesh = mesh if mesh is not None else sharding.make_mesh(saved.get("mesh") or {"data": -1})
  c = ConfigDict(saved["rm"])
  cfg = load_model(ConfigDict(saved["model"]), None).cfg
  graphdef, params, p_shard = build_reward_model(cfg, mesh, None, c.seed)
  tx = make_optimizer(_optim(c), c.num_steps)
  abstract = abstract_state(params, tx, jax.random.key(c.seed))
  restored = Checkpointer(rm_dir / "checkpoints", keep=c.keep).restore_latest(
      abstract, state_shardings(abstract, p_shard, mesh))
  if restored is None:
    raise FileNotFoundError(f"{rm_dir / 'checkpoints'}: no reward-model checkpoint")
  return graphdef, restored[0].params
