"""Cross-entropy of a linear read-out without materialising [B, T, V] logits.

An LM's loss is `logsumexp(h @ W^T) - (h @ W^T)[target]` over a 49k-256k
vocabulary. Computing it as "logits, then loss" keeps float32 logits of the
whole batch (8 x 256 x 49152 x 4 B = 400 MB), their softmax and their gradient
alive at once. Here the sequence is cut into chunks and a `lax.scan` computes,
per chunk, the logits, the loss and -- when differentiated -- the gradients with
respect to the hidden states and the read-out matrix right away (the loss is a
weighted sum, so d loss / d logits = w * (softmax - onehot) is known in the
forward pass). Peak memory is one chunk's logits plus a [V, D] gradient, and
the head is multiplied three times per token, exactly as without chunking.

`linear_cross_entropy(hidden, head, targets, weights)` is a `jax.custom_vjp`
function: without differentiation it only computes the loss.
`linear_logprobs(hidden, head, targets)` (and `linear_logprobs_entropy`) give
per-token log-probs of the targets (scoring, the judge, PPO's policy and
reference passes), again one chunk's logits at a time, forward and backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Tokens per chunk: 256 x 49152 float32 logits = 50 MB.
CHUNK_TOKENS = 256


def _chunk_len(B: int, T: int) -> int:
  """Largest divisor of T with B * c <= CHUNK_TOKENS (at least 1)."""
  best = 1
  for c in range(1, T + 1):
    if T % c == 0 and B * c <= CHUNK_TOKENS:
      best = c
  return best


def _split(x: jax.Array, c: int) -> jax.Array:
  """[B, T, ...] -> [T / c, B, c, ...] (chunks along the sequence; batch stays sharded)."""
  B, T = x.shape[:2]
  return jnp.moveaxis(x.reshape(B, T // c, c, *x.shape[2:]), 1, 0)


def _merge(x: jax.Array) -> jax.Array:
  """Inverse of `_split`."""
  n, B, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(B, n * c, *x.shape[3:])


def _chunk_forward(h, head, t, w):
  """One chunk: (weighted nll sum, correct count, logits - max, exp sum)."""
  logits = jnp.einsum("bcd,vd->bcv", h, head, preferred_element_type=jnp.float32)
  top = jnp.max(logits, axis=-1, keepdims=True)
  shifted = logits - top
  sum_exp = jnp.sum(jnp.exp(shifted), axis=-1)  # [B, c]
  target = jnp.take_along_axis(shifted, t[..., None], axis=-1)[..., 0]  # target logit - max
  nll = jnp.log(sum_exp) - target
  # The target holds the top logit (argmax == target up to exact ties).
  correct = ((target >= 0) & (w > 0)).sum()
  return (w * nll).sum(), correct, shifted, sum_exp


def _loss(hidden, head, targets, weights):
  c = _chunk_len(*targets.shape)

  def body(carry, xs):
    loss, correct = carry
    h, t, w = xs
    l, n, _, _ = _chunk_forward(h, head, t, w)
    return (loss + l, correct + n), None

  xs = (_split(hidden, c), _split(targets, c), _split(weights, c))
  (loss, correct), _ = jax.lax.scan(body, (jnp.float32(0), jnp.int32(0)), xs)
  return loss, correct


@jax.custom_vjp
def linear_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                         weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum_t weights[t] * nll[t] as float32, #tokens with weight > 0 whose target is the top logit).

  hidden [B, T, D]; head [V, D] (logits = hidden @ head^T, accumulated in
  float32); targets [B, T] int; weights [B, T] float32 (e.g. mask / n_tokens
  for a mean). Gradients flow to hidden and head; weights and targets are
  treated as constants.
  """
  return _loss(hidden, head, targets, weights)


def _fwd(hidden, head, targets, weights):
  c = _chunk_len(*targets.shape)

  def body(carry, xs):
    loss, correct, d_head = carry
    h, t, w = xs
    l, n, shifted, sum_exp = _chunk_forward(h, head, t, w)
    probs = jnp.exp(shifted) / sum_exp[..., None]
    onehot = jax.lax.broadcasted_iota(jnp.int32, probs.shape, 2) == t[..., None]
    d_logits = (w[..., None] * (probs - onehot)).astype(h.dtype)  # [B, c, V]
    d_h = jnp.einsum("bcv,vd->bcd", d_logits, head, preferred_element_type=jnp.float32)
    # Accumulated as [D, V] = h^T @ d_logits: the big operand keeps its row-major layout.
    d_head = d_head + jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=jnp.float32)
    return (loss + l, correct + n, d_head), d_h.astype(hidden.dtype)

  xs = (_split(hidden, c), _split(targets, c), _split(weights, c))
  init = (jnp.float32(0), jnp.int32(0), jnp.zeros(head.shape[::-1], jnp.float32))
  (loss, correct, d_head), d_hidden = jax.lax.scan(body, init, xs)
  return (loss, correct), (_merge(d_hidden), d_head.T.astype(head.dtype), weights)


def _bwd(residuals, cotangents):
  d_hidden, d_head, weights = residuals
  g = cotangents[0]  # the correct count has no gradient
  return ((g * d_hidden).astype(d_hidden.dtype), (g * d_head).astype(d_head.dtype),
          None, jnp.zeros_like(weights))


linear_cross_entropy.defvjp(_fwd, _bwd)



def _logprob_chunks(hidden, head, targets, entropy: bool):
  """(log p of targets [B, T], entropy [B, T] or None), one [B, c, V] chunk of logits at a time.

  The chunk body is rematerialised (jax.checkpoint), so under differentiation the
  backward pass recomputes each chunk's logits instead of saving them all. The chunk
  length divides T (`_chunk_len`): padding the sequence to whole chunks instead made
  XLA:CPU abort inside PPO's sharded update (the sweep tests hit it).
  """
  B, T = targets.shape
  c = _chunk_len(B, T)

  @jax.checkpoint
  def chunk(head, h, t):
    logits = jnp.einsum("bcd,vd->bcv", h, head, preferred_element_type=jnp.float32)
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    sum_exp = jnp.sum(jnp.exp(shifted), axis=-1)  # [B, c]
    log_z = jnp.log(sum_exp)
    logp = jnp.take_along_axis(shifted, t[..., None], axis=-1)[..., 0] - log_z
    if not entropy:
      return logp, None
    # H = -sum p log p = log Z - E_p[shifted logit]
    return logp, log_z - jnp.sum(jnp.exp(shifted) * shifted, axis=-1) / sum_exp

  def body(_, xs):
    return None, chunk(head, *xs)

  _, (logp, ent) = jax.lax.scan(body, None, (_split(hidden, c), _split(targets, c)))
  return _merge(logp), (None if ent is None else _merge(ent))


def linear_logprobs(hidden: jax.Array, head: jax.Array, targets: jax.Array) -> jax.Array:
  """log softmax(hidden @ head^T)[targets] per position, [B, T] float32, chunk by chunk.

  hidden [B, T, D]; head [V, D]; targets [B, T] int. Same values as
  `jax.nn.log_softmax(logits)[targets]` of the full [B, T, V] float32 logits,
  but only [B, c, V] of them (c * B <= CHUNK_TOKENS) exist at a time: scoring 8
  rows of 1024 tokens against a 49k vocabulary holds 50 MB of logits instead
  of 1.6 GB (plus as much again for the softmax's exponentials). Any T works.
  Differentiable (each chunk's logits are recomputed in the backward pass).
  """
  return _logprob_chunks(hidden, head, targets, entropy=False)[0]


def linear_logprobs_entropy(hidden: jax.Array, head: jax.Array,
                            targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(`linear_logprobs`, the entropy of each position's full next-token distribution),
  both [B, T] float32, chunk by chunk; differentiable (PPO's policy pass)."""
  return _logprob_chunks(hidden, head, targets, entropy=True)
