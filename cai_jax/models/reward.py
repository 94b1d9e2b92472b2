"""The reward model: a Transformer trunk + a scalar head read at one position per row.

  graphdef, params, shardings = build_reward_model(cfg, mesh, trunk_params)
  scores = reward_scores(graphdef, params, tokens, positions, last_index)   # [B]
  save_reward_model(directory, cfg, params); load_reward_model(directory, mesh)

A trained reward model lives in one directory (the `rm` stage writes
`<workdir>/rm/model/`): `reward_model.json` (the trunk's ModelConfig) and
`params/` (an orbax checkpoint of the parameters alone), so loading it needs
neither the optimizer settings nor the training checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax import sharding
from cai_jax.models.config import ModelConfig
from cai_jax.models.transformer import ScalarHead, Transformer

CONFIG_FILE = "reward_model.json"
PARAMS_DIR = "params"


class RewardModel(nnx.Module):
  """Transformer trunk + scalar head read at one position per row."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
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


def _positions(tokens: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def pair_rewards(graphdef, params, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(reward_a [B], reward_b [B]) in one forward pass over the 2B sequences of a pair batch
  (tokens_a / tokens_b [B, L], last_a / last_b [B])."""
  tokens = jnp.concatenate([batch["tokens_a"], batch["tokens_b"]], axis=0)  # [2B, L]
  last = jnp.concatenate([batch["last_a"], batch["last_b"]], axis=0)  # [2B]
  r = nnx.merge(graphdef, params)(tokens, _positions(tokens), last)  # [2B]
  n = batch["tokens_a"].shape[0]
  return r[:n], r[n:]


def build_reward_model(cfg: ModelConfig, mesh, trunk_params: Any = None, seed: int = 0):
  """(graphdef, params, param shardings); the trunk takes `trunk_params` when given (e.g.
  the SFT policy's), else a random init; the head is always fresh (small random w, b = 0)."""
  graphdef, params, shard = sharding.init_sharded(lambda: RewardModel(cfg, rngs=nnx.Rngs(seed)),
                                                  mesh, "train")
  if trunk_params is not None:
    params = dict(params, trunk=sharding.reshard(trunk_params, shard["trunk"]))
  return graphdef, params, shard


def save_reward_model(directory: str | pathlib.Path, cfg: ModelConfig, params: Any) -> pathlib.Path:
  """Writes a trained reward model (config + params) to `directory`, replacing an older one."""
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  # Uncompressed, as train/checkpoint.py: compression holds a second copy in host memory.
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as ckptr:
    ckptr.save(directory / PARAMS_DIR, args=ocp.args.PyTreeSave(params), force=True)
  (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
  return directory


def load_reward_model(directory: str | pathlib.Path, mesh=None) -> tuple[Any, Any]:
  """(graphdef, params) of a reward model saved by `save_reward_model`, placed for `mesh`
  (default: every device on the data axis)."""
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory).absolute()
  if not (directory / CONFIG_FILE).is_file() or not (directory / PARAMS_DIR).is_dir():
    raise FileNotFoundError(f"{directory}: no trained reward model here (expected {CONFIG_FILE} and "
                            f"{PARAMS_DIR}/, written at the end of stage `rm`); run stage `rm` first")
  cfg = ModelConfig(**json.loads((directory / CONFIG_FILE).read_text()))
  mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1})
  abstract = nnx.eval_shape(lambda: RewardModel(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.param_shardings(abstract_state, mesh, "train")
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), shardings)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    params = ckptr.restore(directory / PARAMS_DIR, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  return graphdef, params
