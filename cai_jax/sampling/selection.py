"""Token selection for the sampler: greedy pick, temperature, top-k and top-p.

Pure functions of a step's logits; `sampling/engine.py` calls `select` once per
decode step inside its jitted loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits per row (ties at the k-th value are kept), rest -> -inf."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [B, 1]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_mask(logits: jax.Array, p: jax.Array | float, iters: int = 64) -> jax.Array:
  """Nucleus filter: keeps every token whose strictly more likely tokens together
  hold less than p of the probability (so the top token always survives); the
  rest -> -inf. logits [B, V].

  Found by bisection on a logit threshold instead of a full sort of the
  vocabulary (sorting [B, 49152] every step is very slow on CPU): the kept set
  is {x >= t} for the smallest t whose strictly-higher mass is < p; 64 halvings
  of the logit range reach adjacent float32 values.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  lo = jnp.min(logits, axis=-1, keepdims=True)  # mass above lo >= p (unless everything ties)
  hi = jnp.max(logits, axis=-1, keepdims=True)  # mass above hi = 0 < p

  def mass_above(t):
    return jnp.sum(jnp.where(logits > t, probs, 0.0), axis=-1, keepdims=True)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) / 2
    below = mass_above(mid) < p  # mid is a valid threshold: move hi down
    return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

  lo, hi = jax.lax.fori_loop(0, iters, halve, (lo, hi))
  # The smallest logit >= hi whose strictly-higher mass is < p; tokens at or above it stay.
  threshold = jnp.min(jnp.where(logits >= hi, logits, jnp.inf), axis=-1, keepdims=True)
  threshold = jnp.where(mass_above(lo) < p, lo, threshold)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def greedy_pick(logits: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """(argmax, log_softmax at the argmax) over `axis` of float32 logits.

  Three plain reductions (max; first index holding it; sum of exp) instead of
  jnp.argmax's value+index reduction and jax.nn.logsumexp's guarded one,
  which on CPU cost several times more over a 49k vocabulary. The first
  maximal index is taken, as jnp.argmax does.
  """
  axis = axis % logits.ndim
  top = jnp.max(logits, axis=axis, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis)
  n = logits.shape[axis]
  tokens = jnp.min(jnp.where(logits == top, iota, n), axis=axis)
  tokens = jnp.minimum(tokens, n - 1)  # a NaN row: no index equals the max
  logp = -jnp.log(jnp.sum(jnp.exp(logits - top), axis=axis))  # log p(argmax) = -(lse - max)
  return tokens, logp


def select(logits, row_keys, step, temperature, top_p, *, greedy: bool, top_k: int,
           use_top_p: bool, vocab_axis: int = -1):
  """Picks one token per row; returns (tokens [B], base-model log-probs [B]).

  logits: [B, V], or [V, B] with vocab_axis=0 (the decode step's layout).
  """
  if greedy:
    if vocab_axis == 0 and logits.shape[1] == 1:
      logits, vocab_axis = logits.T, -1  # free for one row; reducing [V, 1] over V is slow on CPU
    tokens, logp = greedy_pick(logits, vocab_axis)
    return tokens.astype(jnp.int32), logp
  if vocab_axis == 0:
    logits = logits.T
  x = logits / temperature
  x = top_k_mask(x, top_k)
  if use_top_p:
    x = top_p_mask(x, top_p)
  keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
  tokens = jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)
  logp = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits, -1)
  return tokens, logp
