"""The one-token decode step over per-layer (unstacked) weights, for the sampler.

`Transformer` stores its layers stacked and runs them with `lax.scan`, which
keeps compile time flat. In a decode step that costs a copy of every layer's
weights (the scan's dynamic slice is materialised on CPU), doubling the bytes
moved per token in a step that is bound by moving bytes. Here the layers are
split once into separate arrays and applied by an unrolled Python loop, with
the KV cache also kept per layer, so each weight is read once per token.

The arithmetic is the Transformer block's, built from the same functions
(rms_norm, apply_rope, grouped-query attention, cache writes);
tests/test_sampling.py checks decoding against the Transformer's full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cai_jax.models.config import ModelConfig, to_dtype
from cai_jax.models.transformer import KVCache, _attention, _write_cache, apply_rope, rms_norm

LAYER_WEIGHTS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


def unstack_params(params: dict) -> dict:
  """Transformer params (pure dict) -> {"embed", "final_norm", ["lm_head"], "layers": [per-layer dict]}.

  Run outside jit: each layer becomes its own buffer.
  """
  stacked = params["layers"]
  n_layers = stacked["wq"].shape[0]
  out = {k: v for k, v in params.items() if k != "layers"}
  out["layers"] = [{name: stacked[name][l] for name in LAYER_WEIGHTS} for l in range(n_layers)]
  return out


def unstack_cache(cache: KVCache) -> list[tuple[jax.Array, jax.Array]]:
  """Stacked cache [L, B, S, K, H] -> per-layer (k, v) pairs [B, S, K, H] (inside jit)."""
  return [(cache.k[l], cache.v[l]) for l in range(cache.k.shape[0])]


def decode_step(cfg: ModelConfig, weights: dict, tokens: jax.Array, positions: jax.Array,
                cache: list[tuple[jax.Array, jax.Array]]):
  """One new token per row. tokens, positions: [B]; returns (logits [B, V] f32, cache)."""
  dt = to_dtype(cfg.dtype)
  B = tokens.shape[0]
  S = cache[0][0].shape[1]
  pos = positions[:, None]  # [B, 1]
  mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]  # [B, 1, S]
  x = weights["embed"].astype(dt)[tokens][:, None, :]  # [B, 1, D]
  new_cache = []
  for w, (cache_k, cache_v) in zip(weights["layers"], cache):
    w = {n: a.astype(dt) for n, a in w.items()}
    h = rms_norm(x, w["attn_norm"], cfg.norm_eps)
    q = jnp.einsum("btd,dh->bth", h, w["wq"]).reshape(B, 1, cfg.n_heads, cfg.head_dim)
    k = jnp.einsum("btd,dh->bth", h, w["wk"]).reshape(B, 1, cfg.n_kv_heads, cfg.head_dim)
    v = jnp.einsum("btd,dh->bth", h, w["wv"]).reshape(B, 1, cfg.n_kv_heads, cfg.head_dim)
    q = apply_rope(q, pos, cfg.rope_theta)
    k = apply_rope(k, pos, cfg.rope_theta)
    cache_k = _write_cache(cache_k, k, positions)
    cache_v = _write_cache(cache_v, v, positions)
    new_cache.append((cache_k, cache_v))
    x = x + jnp.einsum("bth,hd->btd", _attention(q, cache_k.astype(dt), cache_v.astype(dt), mask),
                       w["wo"])
    h = rms_norm(x, w["mlp_norm"], cfg.norm_eps)
    gate = jnp.einsum("btd,df->btf", h, w["w_gate"])
    up = jnp.einsum("btd,df->btf", h, w["w_up"])
    x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w["w_down"])
  x = rms_norm(x, weights["final_norm"], cfg.norm_eps)[:, 0]  # [B, D]
  if cfg.tie_embeddings:
    logits = jnp.einsum("bd,vd->bv", x, weights["embed"].astype(dt), preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("bd,dv->bv", x, weights["lm_head"].astype(dt), preferred_element_type=jnp.float32)
  return logits, new_cache
