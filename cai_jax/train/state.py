"""TrainState and the optimizer built from optimizer settings (cai_jax/config's `optim` fields).

Master weights and optimizer state stay in the params' dtype (float32 by
default, `model.param_dtype`); the forward pass casts to `model.dtype`
(bfloat16 on accelerators), so mixed precision is a config choice. Remat is
`model.remat` (the transformer checkpoints each block).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cai_jax import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: step counter, params (pure dict), optimizer state, RNG key."""

  step: jax.Array  # [] int32
  params: Any
  opt_state: Any
  rng: jax.Array  # typed PRNG key


def apply_gradients(state: TrainState, loss_of, tx: optax.GradientTransformation
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update by the gradient of `loss_of(params) -> (total, metrics)`; returns the
  new state (step + 1) and the metrics with the gradient's global norm. Jittable; the SFT,
  reward-model and DPO steps are this with their own loss_of."""
  (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_schedule(c: Mapping, num_steps: int = 0) -> optax.Schedule:
  """Linear warmup from 0 then constant / cosine / linear decay (in optimizer updates)."""
  lr, warmup = float(c["lr"]), int(c["warmup_steps"])
  decay = int(c["decay_steps"]) or max(int(num_steps) - warmup, 1)
  end = lr * float(c["final_lr_frac"])
  if c["schedule"] == "constant":
    after = optax.constant_schedule(lr)
  elif c["schedule"] == "cosine":
    after = optax.cosine_decay_schedule(lr, decay, alpha=float(c["final_lr_frac"]))
  else:
    after = optax.linear_schedule(lr, end, decay)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(c: Mapping, num_steps: int = 0) -> optax.GradientTransformation:
  """optax chain from optimizer settings (cai_jax/config's `optim` fields, validated there):
  clip -> adamw|sgd(schedule) [-> MultiSteps]."""
  if c["name"] not in ("adamw", "sgd") or c["schedule"] not in ("constant", "cosine", "linear"):
    raise ValueError(f"optimizer: unknown name {c['name']!r} or schedule {c['schedule']!r}")
  schedule = make_schedule(c, num_steps)
  if c["name"] == "adamw":
    opt = optax.adamw(schedule, b1=c["b1"], b2=c["b2"], eps=c["eps"], weight_decay=c["weight_decay"])
  else:
    opt = optax.chain(optax.add_decayed_weights(c["weight_decay"]) if c["weight_decay"] else
                      optax.identity(), optax.sgd(schedule, momentum=c["momentum"] or None))
  tx = optax.chain(optax.clip_by_global_norm(c["grad_clip"]), opt) if c["grad_clip"] else opt
  if c["grad_accum"] > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(c["grad_accum"]))
  return tx


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Fresh state at step 0 (call under jit with out_shardings to build it sharded)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def state_shardings(state: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
  """NamedShardings for a (possibly abstract) TrainState.

  Every subtree of the optimizer state shaped like the params (Adam moments,
  MultiSteps' gradient accumulator; what optax.tree_utils.tree_map_params
  visits) takes the params' shardings; counters and other leaves are replicated.
  """
  repl = sharding.replicated(mesh)
  param_def = jax.tree.structure(state.params)

  def is_param_tree(x) -> bool:
    return isinstance(x, Mapping) and jax.tree.structure(x) == param_def

  opt = jax.tree.map(lambda x: param_shardings if is_param_tree(x) else repl, state.opt_state,
                     is_leaf=is_param_tree)
  return TrainState(step=repl, params=param_shardings, opt_state=opt, rng=repl)


def abstract_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """ShapeDtypeStructs of the TrainState `create_train_state` would build (no allocation)."""
  return jax.eval_shape(lambda p, r: create_train_state(p, tx, r), params, rng)


def init_train_state(params: Any, param_shardings: Any, tx: optax.GradientTransformation,
                     rng: jax.Array, mesh: Mesh, *, donate: bool = False
                     ) -> tuple[TrainState, TrainState]:
  """(state built directly into its shardings, the state's shardings).

  donate=True hands `params`' buffers to the state (no second copy of the
  weights; the caller's arrays are deleted) -- what a stage that loaded the
  weights only to train them wants.
  """
  shardings = state_shardings(abstract_state(params, tx, rng), param_shardings, mesh)
  state = jax.jit(lambda p, r: create_train_state(p, tx, r), out_shardings=shardings,
                  donate_argnums=(0,) if donate else ())(params, rng)
  return state, shardings
