"""The one-token decode step over per-layer (unstacked) weights, for the sampler.

`Transformer` stores its layers stacked and runs them with `lax.scan`, which
keeps compile time flat. A decode step is a different regime: a handful of
rows against every weight, bound by moving weights, and on CPU the scan's
per-layer slices were materialised (a second copy of every weight per token).
So the sampler prepares the weights once per call and runs this step:
  * layers split into separate arrays, applied by an unrolled loop;
  * weights transposed to (out, in) and activations kept feature-major
    ([D, B]): each matmul is W [F, D] @ x [D, B]. CPU GEMM kernels handle a
    skinny right-hand side far better than a skinny left-hand side (measured
    here: ~1.9x at batch 8 and 32, equal at batch 1);
  * q/k/v and gate/up projections fused into one matmul each;
  * the decode cache is per layer in attention-friendly layouts (keys
    [B, K, H, S], values [B, K, S, H]), and every row writes its step-t token
    into the same slot (prompt width + t): one in-place update instead of a
    per-row scatter; a per-row visibility mask replaces the model's
    "slot = position" rule. Positions (RoPE) stay per row;
  * attention as broadcast-multiply-reduce in float32 rather than batched
    matmuls: per (row, kv head) the products are [G, H] x [H, S], far too
    small for a GEMM call, and XLA's CPU GEMM path copied the whole key cache
    into its preferred layout every step (measured: attention + copies
    ~30 ms of a ~96 ms batch-32 step before, ~10 ms after);
  * the logits stay vocabulary-major [V, B] and the greedy pick reduces over
    axis 0 (sampling/selection.py), skipping a [B, V] transpose per token.

The arithmetic is the Transformer block's (RMSNorm and RoPE in float32, GQA
with a float32 softmax); tests/test_sampling.py checks this step against the
Transformer's full forward to 1e-5.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cai_jax.models.config import ModelConfig, to_dtype
from cai_jax.models.transformer import KVCache


def unstack_params(params: dict) -> dict:
  """Transformer params (pure dict) -> decode weights, each layer its own buffers.

  {"embed" [V, D], "final_norm", ["lm_head_t" [V, D]], "layers": [{attn_norm,
  wqkv_t [(N+2K)H, D], wo_t [D, NH], mlp_norm, w_gateup_t [2F, D], w_down_t [D, F]}]}.
  Run outside jit (one copy of the weights, made once per set of params).
  """
  st = params["layers"]
  out = {"embed": params["embed"], "final_norm": params["final_norm"]}
  if "lm_head" in params:
    out["lm_head_t"] = params["lm_head"].T
  out["layers"] = [{
      "attn_norm": st["attn_norm"][l],
      "wqkv_t": jnp.concatenate([st["wq"][l], st["wk"][l], st["wv"][l]], axis=-1).T,
      "wo_t": st["wo"][l].T,
      "mlp_norm": st["mlp_norm"][l],
      "w_gateup_t": jnp.concatenate([st["w_gate"][l], st["w_up"][l]], axis=-1).T,
      "w_down_t": st["w_down"][l].T,
  } for l in range(st["wq"].shape[0])]
  return out


def _rms_norm_fm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """rms_norm over the feature axis 0 of a feature-major [D, B] array."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=0, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)[:, None]).astype(x.dtype)


def _rope_fm(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """apply_rope for feature-major heads x [N, H, B] at positions [B]."""
  head_dim = x.shape[1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = inv_freq[:, None] * positions.astype(jnp.float32)[None, :]  # [H/2, B]
  cos, sin = jnp.cos(angles)[None], jnp.sin(angles)[None]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=1).astype(x.dtype)


def cache_from_prefill(cache: KVCache, extra_slots: int) -> list[tuple[jax.Array, jax.Array]]:
  """Prefill cache [L, B, T, K, H] -> per layer (keys [B, K, H, T+extra], values [B, K, T+extra, H])."""
  keys_pad = ((0, 0), (0, 0), (0, 0), (0, extra_slots))  # slots are the last axis of keys
  values_pad = ((0, 0), (0, 0), (0, extra_slots), (0, 0))  # and the third of values
  return [(jnp.pad(jnp.transpose(cache.k[l], (0, 2, 3, 1)), keys_pad),
           jnp.pad(jnp.transpose(cache.v[l], (0, 2, 1, 3)), values_pad))
          for l in range(cache.k.shape[0])]


def visible_slots(prompt_lengths: jax.Array, prompt_width: int, step: jax.Array,
                  n_slots: int) -> jax.Array:
  """[B, S] bool: a row's own prompt slots and the generated slots up to `step`."""
  slots = jnp.arange(n_slots)[None, :]
  return (slots < prompt_lengths[:, None]) | ((slots >= prompt_width) & (slots <= prompt_width + step))


def decode_step(cfg: ModelConfig, weights: dict, tokens: jax.Array, positions: jax.Array,
                cache: list[tuple[jax.Array, jax.Array]], slot: jax.Array, visible: jax.Array):
  """One new token per row. tokens, positions: [B]; slot: [] where every row's token goes.

  weights: `unstack_params(...)`; cache: per layer (keys [B, K, H, S], values
  [B, K, S, H]); visible: [B, S] (the slots each row attends to, `slot` included).
  Returns (logits [V, B] float32 -- vocabulary-major, updated cache).
  """
  dt = to_dtype(cfg.dtype)
  B = tokens.shape[0]
  N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  G = N // K
  mask = visible[:, None, None, :]  # [B, 1, 1, S]
  x = weights["embed"].astype(dt)[tokens].T  # [D, B] feature-major
  new_cache = []
  for w, (keys, values) in zip(weights["layers"], cache):
    w = {n: a.astype(dt) for n, a in w.items()}
    h = _rms_norm_fm(x, w["attn_norm"], cfg.norm_eps)
    qkv = w["wqkv_t"] @ h  # [(N+2K)H, B]
    q = _rope_fm(qkv[:N * H].reshape(N, H, B), positions, cfg.rope_theta)
    k = _rope_fm(qkv[N * H:(N + K) * H].reshape(K, H, B), positions, cfg.rope_theta)
    v = qkv[(N + K) * H:].reshape(K, H, B)
    keys = jax.lax.dynamic_update_slice(keys, jnp.transpose(k, (2, 0, 1))[..., None].astype(keys.dtype),
                                        (0, 0, 0, slot))
    values = jax.lax.dynamic_update_slice(values, jnp.transpose(v, (2, 0, 1))[:, :, None].astype(values.dtype),
                                          (0, 0, slot, 0))
    new_cache.append((keys, values))
    # Broadcast-multiply-reduce instead of batched matmuls: each (b, k) pair is
    # a [G, H] x [H, S] product too small for a GEMM call, and a GEMM library
    # may first copy the whole cache into its preferred layout. Summing over a
    # non-minor axis keeps the cache's minor axis (S for keys, H for values)
    # as the vector lane.
    q = jnp.transpose(q.reshape(K, G, H, B), (3, 0, 1, 2)).astype(jnp.float32)  # [B, K, G, H]
    scores = jnp.sum(q[..., None] * keys.astype(jnp.float32)[:, :, None], axis=3) / math.sqrt(H)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)  # [B, K, G, S]
    probs = jax.nn.softmax(scores, axis=-1)
    attn = jnp.sum(probs[..., None] * values.astype(jnp.float32)[:, :, None], axis=3)  # [B, K, G, H]
    attn = jnp.transpose(attn, (1, 2, 3, 0)).reshape(N * H, B).astype(dt)
    x = x + w["wo_t"] @ attn
    h = _rms_norm_fm(x, w["mlp_norm"], cfg.norm_eps)
    gate, up = jnp.split(w["w_gateup_t"] @ h, 2, axis=0)  # [F, B] each
    x = x + w["w_down_t"] @ (jax.nn.silu(gate) * up)
  x = _rms_norm_fm(x, weights["final_norm"], cfg.norm_eps)
  head = weights["embed"] if cfg.tie_embeddings else weights["lm_head_t"]
  logits = jnp.matmul(head.astype(dt), x, preferred_element_type=jnp.float32)  # [V, B]
  # Keep the [V, B] product as computed; a transpose folded into the matmul
  # would turn it back into the slow skinny-left-hand-side form. The caller
  # reduces over axis 0 (greedy) or transposes (sampling).
  return jax.lax.optimization_barrier(logits), new_cache
