"""The transformer: KV-cache equivalence, packing masks, sharded == unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cai_jax import sharding
from cai_jax.models import KVCache, Transformer, get_model_config, transformer


def _inputs(cfg, batch=4, length=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, length)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return tokens, positions


def test_kv_cache_decoding_matches_full_recomputation(tiny_cfg):
  model = Transformer(tiny_cfg, rngs=nnx.Rngs(0))
  tokens, positions = _inputs(tiny_cfg)
  full, _ = model(tokens, positions)
  cache = KVCache.zeros(tiny_cfg, tokens.shape[0], 16)
  logits, cache = model(tokens[:, :5], positions[:, :5], cache)
  steps = [logits]
  for t in range(5, tokens.shape[1]):
    logits, cache = model(tokens[:, t:t + 1], positions[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_packed_segments_do_not_attend_across(tiny_cfg):
  model = Transformer(tiny_cfg, rngs=nnx.Rngs(1))
  a, _ = _inputs(tiny_cfg, batch=1, length=5, seed=1)
  b, _ = _inputs(tiny_cfg, batch=1, length=7, seed=2)
  packed = jnp.concatenate([a, b], axis=1)
  positions = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
  segments = jnp.asarray([[1] * 5 + [2] * 7])
  logits, _ = model(packed, positions, segment_ids=segments)
  alone_b, _ = model(b, jnp.arange(7)[None])
  np.testing.assert_allclose(logits[:, 5:], alone_b, atol=1e-5)


def test_untied_head_and_hidden_states(tiny_cfg):
  cfg = tiny_cfg.replace(tie_embeddings=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  tokens, positions = _inputs(cfg, batch=2, length=4)
  hidden, _ = model.hidden(tokens, positions)
  logits, _ = model(tokens, positions)
  assert hidden.shape == (2, 4, cfg.d_model)
  np.testing.assert_allclose(logits, hidden @ model.lm_head[...], atol=1e-5)


@pytest.mark.parametrize("axes", [{"data": 2, "tensor": 4}, {"data": 8}, {"tensor": 8},
                                  {"fsdp": 4, "tensor": 2}, {"data": 2, "fsdp": 4}])
def test_sharded_forward_equals_unsharded(tiny_cfg, axes):
  assert jax.device_count() == 8
  make = lambda: Transformer(tiny_cfg, rngs=nnx.Rngs(3))  # noqa: E731
  reference = make()
  tokens, positions = _inputs(tiny_cfg, batch=8)
  expected, _ = reference(tokens, positions)

  mesh = sharding.make_mesh(axes)
  graphdef, params, shardings = sharding.init_sharded(make, mesh)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  sharded_params = any(any(p is not None for p in s) for s in specs)
  assert sharded_params == (axes.get("fsdp", 1) * axes.get("tensor", 1) > 1)
  batch = sharding.shard_batch({"tokens": tokens, "positions": positions}, mesh)
  n_batch_shards = axes.get("data", 1) * axes.get("fsdp", 1)
  assert len(batch["tokens"].sharding.device_set) == 8
  assert batch["tokens"].addressable_shards[0].data.shape[0] == 8 // n_batch_shards

  @jax.jit
  def forward(params, batch):
    return nnx.merge(graphdef, params)(batch["tokens"], batch["positions"])[0]

  np.testing.assert_allclose(forward(params, batch), expected, atol=1e-5)


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="unknown axis 'model'"):
    sharding.resolve_mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="use 6 devices, but 8"):
    sharding.resolve_mesh_shape({"data": 2, "tensor": 3}, 8)
  assert sharding.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}


def test_model_config_validation():
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    get_model_config("tiny", n_kv_heads=3)
  with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
    get_model_config("gpt5")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_custom_backward_matches_einsum(dtype):
  """transformer.dense has a hand-written VJP; its values and gradients are einsum's."""
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (2, 5, 8), dtype)
  w = jax.random.normal(kw, (8, 12), dtype)
  g = jax.random.normal(kg, (2, 5, 12), dtype)
  ours, ours_vjp = jax.vjp(transformer.dense, x, w)
  ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum("btd,df->btf", a, b), x, w)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32), rtol=tol, atol=tol)
  for a, b in zip(ours_vjp(g), ref_vjp(g)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)
