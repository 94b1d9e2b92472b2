"""Generalised advantage estimation (Schulman et al. 2016) and masked whitening.

Layout: every array is [B, T] over the *whole* sequence (prompt + response +
padding), aligned like `sampling.sequence_logprobs`: column t belongs to the
action "emit token t". `mask[b, t]` is True for response tokens; it must be one
contiguous run per row (the response), so the step after the last masked
token is terminal (its value counts as 0). Entries outside the mask come back
as 0.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
    A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
    R_t     = A_t + V_t            (the value targets)

The recursion runs as a reverse `lax.scan` over the time axis, so it is one
fused loop inside the jitted rollout step and costs O(T) sequential steps.
Defaults: gamma = 1 (the paper: no discounting inside a ~128-token answer)
and lam = 0.95 (the paper does not state it; 0.95 is the common choice for
language-model PPO, e.g. Ziegler et al. 2019 / InstructGPT, and trades a
little bias for much less variance than lam = 1 with a fresh value head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae_advantages(rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """(advantages [B, T], returns [B, T]) by a reverse scan; 0 outside `mask`.

  rewards, values: [B, T] float; mask: [B, T] bool (one contiguous run per row).
  """
  m = mask.astype(jnp.float32)
  r = jnp.where(mask, rewards.astype(jnp.float32), 0.0)
  v = jnp.where(mask, values.astype(jnp.float32), 0.0)
  # Next step's value and "is the next step still in the response", 0 past the end.
  next_v = jnp.pad(v[:, 1:], ((0, 0), (0, 1)))
  next_m = jnp.pad(m[:, 1:], ((0, 0), (0, 1)))
  deltas = r + gamma * next_v * next_m - v  # [B, T]

  def back(carry, xs):  # carry: A_{t+1} [B]
    delta_t, next_m_t = xs
    adv_t = delta_t + gamma * lam * next_m_t * carry
    return adv_t, adv_t

  # Scan over time (leading axis) from the end.
  _, adv = jax.lax.scan(back, jnp.zeros(r.shape[:1], jnp.float32), (deltas.T, next_m.T),
                        reverse=True)
  adv = jnp.where(mask, adv.T, 0.0)  # [B, T]
  returns = jnp.where(mask, adv + v, 0.0)
  return adv, returns


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of x over the True entries of mask (0 where there are none)."""
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Population variance of x over the True entries of mask."""
  mean = masked_mean(x, mask)
  return masked_mean(jnp.square(x - mean), mask)


def masked_whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries; 0 outside the mask.

  With shift_mean=False only the scale changes (the mean is added back), which
  keeps the sign of, e.g., a reward that is all positive.
  """
  mean = masked_mean(x, mask)
  out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask, out, 0.0)


def explained_variance(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var[target - pred] / Var[target] over the mask (1 = perfect, <= 0 = useless)."""
  var_t = masked_var(target, mask)
  return 1.0 - masked_var(target - pred, mask) / jnp.maximum(var_t, 1e-8)
