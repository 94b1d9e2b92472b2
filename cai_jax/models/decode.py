"""The one-token decode step over per-layer (unstacked) weights, for the sampler.

`Transformer` stores its layers stacked and runs them with `lax.scan`, which
keeps compile time flat. In a decode step on CPU that costs a copy of every
layer's weights (the scan's dynamic slice is materialised), doubling the bytes
moved per token in a step that is bound by moving bytes. So the sampler splits
the layers once into separate arrays and applies them with an unrolled loop:
  * q/k/v and gate/up projections are fused into one matmul each (fewer,
    wider dots for the skinny [B, D] activations);
  * the decode cache is per layer and laid out for attention without
    transposes: keys [B, K, H, S], values [B, K, S, H];
  * every row writes its step-t token into the same slot (prompt width + t),
    so the write is one in-place dynamic_update_slice; a per-row visibility
    mask (its own prompt slots + the generated slots so far) replaces the
    model's "slot = position" rule. Positions (RoPE) stay per row.

The arithmetic is the Transformer block's (same rms_norm, apply_rope, GQA,
float32 softmax); tests/test_sampling.py checks decoding against the
Transformer's full forward to 1e-5.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cai_jax.models.config import ModelConfig, to_dtype
from cai_jax.models.transformer import KVCache, apply_rope, rms_norm


def unstack_params(params: dict) -> dict:
  """Transformer params (pure dict) -> {"embed", "final_norm", ["lm_head"], "layers": [...]}.

  Each layer dict holds attn_norm, wqkv [D, (N+2K)H], wo, mlp_norm,
  w_gateup [D, 2F], w_down. Run outside jit: each layer becomes its own buffer.
  """
  st = params["layers"]
  out = {k: v for k, v in params.items() if k != "layers"}
  out["layers"] = [{
      "attn_norm": st["attn_norm"][l],
      "wqkv": jnp.concatenate([st["wq"][l], st["wk"][l], st["wv"][l]], axis=-1),
      "wo": st["wo"][l],
      "mlp_norm": st["mlp_norm"][l],
      "w_gateup": jnp.concatenate([st["w_gate"][l], st["w_up"][l]], axis=-1),
      "w_down": st["w_down"][l],
  } for l in range(st["wq"].shape[0])]
  return out


def cache_from_prefill(cache: KVCache, extra_slots: int) -> list[tuple[jax.Array, jax.Array]]:
  """Prefill cache [L, B, T, K, H] -> per layer (keys [B, K, H, T+extra], values [B, K, T+extra, H])."""
  pad = ((0, 0), (0, 0), (0, 0), (0, extra_slots))
  return [(jnp.pad(jnp.transpose(cache.k[l], (0, 2, 3, 1)), pad),
           jnp.pad(jnp.transpose(cache.v[l], (0, 2, 1, 3)), pad[:2] + pad[3:] + pad[2:3]))
          for l in range(cache.k.shape[0])]


def visible_slots(prompt_lengths: jax.Array, prompt_width: int, step: jax.Array,
                  n_slots: int) -> jax.Array:
  """[B, S] bool: a row's own prompt slots and the generated slots up to `step`."""
  slots = jnp.arange(n_slots)[None, :]
  return (slots < prompt_lengths[:, None]) | ((slots >= prompt_width) & (slots <= prompt_width + step))


def decode_step(cfg: ModelConfig, weights: dict, tokens: jax.Array, positions: jax.Array,
                cache: list[tuple[jax.Array, jax.Array]], slot: jax.Array, visible: jax.Array):
  """One new token per row. tokens, positions: [B]; slot: [] where every row's token goes.

  cache: per layer (keys [B, K, H, S], values [B, K, S, H]); visible: [B, S]
  (which slots each row attends to; it must include `slot`).
  Returns (logits [B, V] float32, updated cache).
  """
  dt = to_dtype(cfg.dtype)
  B = tokens.shape[0]
  N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  pos = positions[:, None]  # [B, 1]
  visible = visible[:, None, None, :]  # [B, 1, 1, S]
  x = weights["embed"].astype(dt)[tokens][:, None, :]  # [B, 1, D]
  new_cache = []
  for w, (keys, values) in zip(weights["layers"], cache):
    w = {n: a.astype(dt) for n, a in w.items()}
    h = rms_norm(x, w["attn_norm"], cfg.norm_eps)
    qkv = jnp.einsum("btd,dh->bth", h, w["wqkv"])  # [B, 1, (N+2K)H]
    q = apply_rope(qkv[..., :N * H].reshape(B, 1, N, H), pos, cfg.rope_theta)
    k = apply_rope(qkv[..., N * H:(N + K) * H].reshape(B, 1, K, H), pos, cfg.rope_theta)
    v = qkv[..., (N + K) * H:].reshape(B, K, 1, H)
    keys = jax.lax.dynamic_update_slice(keys, k.reshape(B, K, H, 1).astype(keys.dtype), (0, 0, 0, slot))
    values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, 0, slot, 0))
    new_cache.append((keys, values))
    q = q.reshape(B, K, N // K, H)  # query heads grouped by their kv head
    scores = jnp.einsum("bkgh,bkhs->bkgs", q, keys.astype(dt),
                        preferred_element_type=jnp.float32) / math.sqrt(H)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    attn = jnp.einsum("bkgs,bksh->bkgh", probs, values.astype(dt)).reshape(B, 1, N * H)
    x = x + jnp.einsum("bth,hd->btd", attn, w["wo"])
    h = rms_norm(x, w["mlp_norm"], cfg.norm_eps)
    gate, up = jnp.split(jnp.einsum("btd,df->btf", h, w["w_gateup"]), 2, axis=-1)
    x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w["w_down"])
  x = rms_norm(x, weights["final_norm"], cfg.norm_eps)[:, 0]  # [B, D]
  if cfg.tie_embeddings:
    logits = jnp.einsum("bd,vd->bv", x, weights["embed"].astype(dt), preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("bd,dv->bv", x, weights["lm_head"].astype(dt), preferred_element_type=jnp.float32)
  return logits, new_cache
