"""Supervised fine-tuning (SL-CAI): a pure sharded step and a whole run (`fine_tune`).

`sft_step(state, batch, *, graphdef, tx, loss_fn, loss_cfg)` is a module-level
pure function; `make_sft_step` jits it once with explicit NamedShardings (the
state's from `train.state.state_shardings`, the batch's along the data axes)
and a donated state. `fine_tune` runs it through the shared loop (checkpoints,
resume, metrics) on tokenized examples; the `sft` stage reads the data and
exports the result.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import sharding
from cai_jax.losses import LossFn, get_loss
from cai_jax.train.state import TrainState, apply_gradients

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "positions", "segment_ids", "loss_mask")


def lm_outputs(graphdef: Any, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The forward pass SFT losses read: {"hidden": [B, T, D], "head": [V, D]}.

  The read-out is left to the loss, so that sft_ce can fuse it with the
  cross-entropy (losses.sft_ce / losses/fused_ce.py); `losses.lm_logits` turns these
  into [B, T, V] logits for a loss that wants them.
  """
  model = nnx.merge(graphdef, params)
  hidden, _ = model.hidden(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"])
  return {"hidden": hidden, "head": model.unembedding()}


def sft_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: Any,
             tx: optax.GradientTransformation, loss_fn: LossFn,
             loss_cfg: Mapping | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer (micro-)step on `batch`; returns the new state and scalar metrics.

  With gradient accumulation (optax.MultiSteps) `state.step` counts micro-batches
  and params change every k-th call.
  """
  def loss_of(params):
    out = loss_fn(lm_outputs(graphdef, params, batch), batch, loss_cfg or {})
    return out.total, out.metrics

  return apply_gradients(state, loss_of, tx)


def batch_shardings(mesh: Mesh, keys=BATCH_KEYS) -> dict[str, jax.sharding.NamedSharding]:
  """[B, T] arrays split along the batch (data, fsdp) axes."""
  return {k: sharding.batch_sharding(mesh, 2) for k in keys}


def make_sft_step(*, graphdef: Any, tx: optax.GradientTransformation, state_shardings: TrainState,
                  mesh: Mesh, loss: str | LossFn = "sft_ce", loss_cfg: Mapping | None = None
                  ) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict]]:
  """jit(sft_step) with in/out shardings and the state donated."""
  loss_fn = get_loss(loss) if isinstance(loss, str) else loss
  step = functools.partial(sft_step, graphdef=graphdef, tx=tx, loss_fn=loss_fn,
                           loss_cfg=dict(loss_cfg or {}))
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_fn(*, graphdef: Any, mesh: Mesh, batches: list[dict[str, np.ndarray]],
                 loss: str | LossFn = "sft_ce") -> Callable[[TrainState], dict[str, float]]:
  """Token-weighted mean loss / accuracy of the current params over fixed held-out batches
  (every host holds them whole)."""
  loss_fn = get_loss(loss) if isinstance(loss, str) else loss

  @jax.jit
  def metrics_of(params, batch):
    return loss_fn(lm_outputs(graphdef, params, batch), batch, {}).metrics

  def eval_fn(state: TrainState) -> dict[str, float]:
    tot = {"loss": 0.0, "accuracy": 0.0}
    n = 0.0
    for b in batches:
      m = jax.device_get(metrics_of(state.params, sharding.shard_global_batch(b, mesh)))
      k = float(m["n_tokens"])
      tot = {key: tot[key] + float(m[key]) * k for key in tot}
      n += k
    return {key: v / max(n, 1.0) for key, v in tot.items()}

  return eval_fn


# ----------------------------------------------------------------------------- a whole run


@dataclasses.dataclass(frozen=True)
class SFTSettings:
  """How to fine-tune (the `sft` stage fills it from config.sft)."""

  optim: Mapping[str, Any]  # train.state.make_optimizer's fields
  seq_len: int = 512
  pack: bool = True
  batch_size: int = 8
  num_steps: int = 100
  helpful_fraction: float = -1.0  # share of helpful examples; -1 = their natural share
  eval_every: int = 50
  checkpoint_every: int = 50
  keep: int = 3
  log_every: int = 10
  loss: str = "sft_ce"
  seed: int = 0


def split_heldout(examples: list, fraction: float, seed: int) -> tuple[list, list]:
  """(train, held-out): a seeded random `fraction` of the examples, at least one when > 0."""
  if fraction <= 0 or len(examples) < 2:
    return list(examples), []
  order = np.random.default_rng(seed).permutation(len(examples))
  n = min(max(int(round(fraction * len(examples))), 1), len(examples) - 1)
  held = set(order[:n].tolist())
  return ([e for i, e in enumerate(examples) if i not in held],
          [e for i, e in enumerate(examples) if i in held])


def eval_batches(items: list, seq_len: int, pad_id: int, batch_size: int) -> list[dict[str, np.ndarray]]:
  """Every held-out example exactly once, one per row; the last batch is filled with empty rows."""
  from cai_jax.data.pipeline import pack_rows
  batches = []
  for lo in range(0, len(items), batch_size):
    b = pack_rows(items[lo:lo + batch_size], seq_len, pad_id, pack=False)
    pad = batch_size - len(b["tokens"])
    batches.append({k: np.pad(v, ((0, pad), (0, 0)), constant_values=pad_id if k == "tokens" else 0)
                    for k, v in b.items()})
  return batches


def fine_tune(loaded, items: list, held_items: list, s: SFTSettings, sft_dir: str | pathlib.Path,
              mesh: Mesh) -> tuple[TrainState, dict]:
  """Fine-tunes `loaded` (a LoadedModel; its params are donated) on tokenized examples.

  Checkpoints, metrics.jsonl and tb/ go under sft_dir; a rerun resumes from the newest
  readable checkpoint, data iterator included. Returns (final state, summary).
  """
  from cai_jax.data.pipeline import SFTBatches
  from cai_jax.train.checkpoint import Checkpointer
  from cai_jax.train.loop import read_metrics, restore_or_keep, run_loop
  from cai_jax.train.state import init_train_state, make_optimizer

  sft_dir = pathlib.Path(sft_dir)
  sft_dir.mkdir(parents=True, exist_ok=True)
  tok = loaded.tokenizer
  sources = [[t for t in items if t.kind == "revision"], [t for t in items if t.kind == "helpful"]]
  frac = s.helpful_fraction
  if frac < 0:  # natural proportions
    frac = len(sources[1]) / max(len(items), 1)
  log.info("sft: %d revision + %d helpful training examples (helpful share %.2f), %d held out",
           len(sources[0]), len(sources[1]), frac, len(held_items))
  tx = make_optimizer(s.optim, s.num_steps)
  p_shard = jax.tree.map(lambda x: x.sharding, loaded.params)
  state, s_shard = init_train_state(loaded.params, p_shard, tx, jax.random.key(s.seed), mesh,
                                    donate=True)
  ckpt = Checkpointer(sft_dir / "checkpoints", keep=s.keep)
  state, extra = restore_or_keep(ckpt, state, s_shard)
  stream = SFTBatches(sources, [1.0 - frac, frac], seq_len=s.seq_len, batch_size=s.batch_size,
                      pad_id=tok.pad_id, seed=s.seed, pack=s.pack)
  if extra and "data" in extra:
    stream.set_state(extra["data"])
  step_fn = make_sft_step(graphdef=loaded.graphdef, tx=tx, state_shardings=s_shard, mesh=mesh,
                          loss=s.loss)
  eval_fn = None
  if held_items:
    eval_fn = make_eval_fn(graphdef=loaded.graphdef, mesh=mesh, loss=s.loss,
                           batches=eval_batches(held_items, s.seq_len, tok.pad_id, s.batch_size))
  batches = (sharding.shard_batch(b, mesh) for b in stream)
  state = run_loop(state=state, step_fn=step_fn, batches=batches, num_steps=s.num_steps,
                   workdir=sft_dir, checkpointer=ckpt, data_state_fn=lambda: {"data": stream.get_state()},
                   eval_fn=eval_fn, eval_every=s.eval_every, save_every=s.checkpoint_every,
                   log_every=s.log_every, stage="sft", tokens_in_batch=s.batch_size * s.seq_len)
  ckpt.close()
  curve = read_metrics(sft_dir / "metrics.jsonl", "sft")
  speeds = [r["tokens_per_s"] for r in curve[1:] if "tokens_per_s" in r]
  summary = dict(steps=int(state.step), first_loss=curve[0]["loss"] if curve else None,
                 last_loss=curve[-1]["loss"] if curve else None,
                 tokens_per_s=float(np.median(speeds)) if speeds else None,
                 eval=eval_fn(state) if eval_fn else None)
  return state, summary
