"""GAE and the masked statistics match a plain NumPy loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.train import gae


def gae_reference(rewards, values, mask, gamma, lam):
  """Textbook GAE, one row at a time, over the response segment only."""
  adv = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b])
    last = 0.0
    for j in reversed(range(len(idx))):
      t = idx[j]
      next_v = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  returns = np.where(mask, adv + values, 0.0)
  return adv, returns


def _ragged_batch(seed=0, B=5, T=12):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  mask = np.zeros((B, T), bool)
  for b in range(B):  # a prompt of 0..3 tokens, then a response of 1..T-4 tokens, then padding
    start = rng.integers(0, 4)
    length = rng.integers(1, T - 3)
    mask[b, start:start + length] = True
  return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_numpy_loop(gamma, lam):
  rewards, values, mask = _ragged_batch()
  adv, ret = gae.gae_advantages(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                                gamma=gamma, lam=lam)
  ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)


def test_gamma_lam_one_returns_are_reward_to_go():
  # With gamma = lam = 1 the value targets are the undiscounted sums of future rewards.
  rewards, values, mask = _ragged_batch(seed=3)
  _, ret = gae.gae_advantages(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                              gamma=1.0, lam=1.0)
  r = np.where(mask, rewards, 0.0)
  to_go = np.where(mask, np.cumsum(r[:, ::-1], axis=1)[:, ::-1], 0.0)
  np.testing.assert_allclose(np.asarray(ret), to_go, rtol=1e-5, atol=1e-5)


def test_masked_whiten_and_explained_variance():
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, size=(4, 7)).astype(np.float32)
  mask = rng.random((4, 7)) < 0.6
  sel = x[mask].astype(np.float64)
  want = (x - sel.mean()) / np.sqrt(sel.var() + 1e-8)
  got = np.asarray(gae.masked_whiten(jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_allclose(got[mask], want[mask], rtol=1e-5, atol=1e-5)
  assert np.all(got[~mask] == 0)
  got_scale = np.asarray(gae.masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False))
  np.testing.assert_allclose(got_scale[mask], want[mask] + sel.mean(), rtol=1e-5, atol=1e-5)

  pred = x + rng.normal(0, 0.5, size=x.shape).astype(np.float32)
  ev = float(gae.explained_variance(jnp.asarray(pred), jnp.asarray(x), jnp.asarray(mask)))
  want_ev = 1 - np.var((x - pred)[mask].astype(np.float64)) / np.var(sel)
  np.testing.assert_allclose(ev, want_ev, rtol=1e-4)
