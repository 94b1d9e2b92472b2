"""The PPO registry losses (ppo_clip, value_clip, kl_penalty) against NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import losses
from cai_jax.losses import get_loss


def _batch(seed=0, B=3, T=9):
  rng = np.random.default_rng(seed)
  mask = np.zeros((B, T), bool)
  mask[0, 2:7] = True
  mask[1, 4:9] = True
  mask[2, 1:3] = True
  old = rng.normal(-2.0, 0.5, size=(B, T)).astype(np.float32)
  new = (old + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)  # ratios spread around 1
  return dict(
      mask=mask, old_logprobs=old, logprobs=new,
      ref_logprobs=(old + rng.normal(0, 0.4, size=(B, T))).astype(np.float32),
      advantages=rng.normal(size=(B, T)).astype(np.float32),
      entropy=rng.uniform(0, 3, size=(B, T)).astype(np.float32),
      values=rng.normal(size=(B, T)).astype(np.float32),
      old_values=rng.normal(size=(B, T)).astype(np.float32),
      returns=rng.normal(size=(B, T)).astype(np.float32))


def _split(b):
  outputs = {k: jnp.asarray(b[k]) for k in ("logprobs", "entropy", "values")}
  batch = {k: jnp.asarray(v) for k, v in b.items() if k not in outputs}
  return outputs, batch


def test_ppo_clip_matches_numpy():
  b = _batch()
  cfg = {"clip_eps": 0.2, "entropy_coef": 0.01}
  out = get_loss("ppo_clip")(*_split(b), cfg)
  m = b["mask"]
  ratio = np.exp(b["logprobs"].astype(np.float64) - b["old_logprobs"])
  a = b["advantages"]
  unclipped, clipped = ratio * a, np.clip(ratio, 0.8, 1.2) * a
  pg = -np.minimum(unclipped, clipped)[m].mean()
  ent = b["entropy"][m].mean()
  assert 0 < (clipped < unclipped)[m].mean() < 1  # the batch really exercises both branches
  np.testing.assert_allclose(float(out.total), pg - 0.01 * ent, rtol=1e-5)
  np.testing.assert_allclose(float(out.metrics["policy_loss"]), pg, rtol=1e-5)
  np.testing.assert_allclose(float(out.metrics["entropy"]), ent, rtol=1e-5)
  np.testing.assert_allclose(float(out.metrics["clip_frac"]), (clipped < unclipped)[m].mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["approx_kl"]),
                             ((ratio - 1) - np.log(ratio))[m].mean(), rtol=1e-4)


def test_ppo_clip_gradient_is_zero_where_clipped():
  # Tokens whose ratio left the trust region on the advantageous side get no gradient.
  b = _batch(seed=1)
  outputs, batch = _split(b)
  grad = jax.grad(lambda lp: get_loss("ppo_clip")(
      dict(outputs, logprobs=lp), batch, {"clip_eps": 0.2}).total)(outputs["logprobs"])
  ratio = np.exp(b["logprobs"] - b["old_logprobs"])
  a = b["advantages"]
  cut = ((a > 0) & (ratio > 1.2)) | ((a < 0) & (ratio < 0.8)) | ~b["mask"]
  assert cut.any() and (~cut).any()
  np.testing.assert_array_equal(np.asarray(grad)[cut], 0.0)
  # Elsewhere d/dlogp of -mean(r * A) is -r * A / n_tokens.
  n = b["mask"].sum()
  np.testing.assert_allclose(np.asarray(grad)[~cut], (-ratio * a / n)[~cut], rtol=1e-5)


@pytest.mark.parametrize("eps", [0.2, 0.0])
def test_value_clip_matches_numpy(eps):
  b = _batch(seed=2)
  out = get_loss("value_clip")(*_split(b), {"value_clip_eps": eps, "value_coef": 0.5})
  m = b["mask"]
  v, old, ret = (b[k].astype(np.float64) for k in ("values", "old_values", "returns"))
  err = (v - ret) ** 2
  if eps:
    err = np.maximum(err, (old + np.clip(v - old, -eps, eps) - ret) ** 2)
  want = 0.5 * err[m].mean()
  np.testing.assert_allclose(float(out.metrics["value_loss"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(out.total), 0.5 * want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_and_penalty(kind):
  b = _batch(seed=3)
  d = b["ref_logprobs"].astype(np.float64) - b["logprobs"]
  want_tok = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.exp(d) - 1 - d}[kind]
  got_tok = losses.kl_estimate(jnp.asarray(b["logprobs"]), jnp.asarray(b["ref_logprobs"]), kind)
  np.testing.assert_allclose(np.asarray(got_tok), want_tok, rtol=1e-4, atol=1e-6)
  outputs, batch = _split(b)
  out = get_loss("kl_penalty")(outputs, batch, {"kl_estimator": kind, "kl_coef": 0.3})
  np.testing.assert_allclose(float(out.total), 0.3 * want_tok[b["mask"]].mean(), rtol=1e-4)
  # A per-batch coefficient (the adaptive controller's) wins over the config's.
  out = get_loss("kl_penalty")(outputs, dict(batch, kl_coef=jnp.float32(2.0)),
                                      {"kl_estimator": kind, "kl_coef": 0.3})
  np.testing.assert_allclose(float(out.total), 2.0 * want_tok[b["mask"]].mean(), rtol=1e-4)


def test_k1_and_k3_are_unbiased_for_the_true_kl():
  # Sampling from p, E[k1] = E[k3] = KL(p || q).
  rng = np.random.default_rng(0)
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.3, 0.5])
  x = rng.choice(3, size=200_000, p=p)
  lp, lq = jnp.asarray(np.log(p)[x]), jnp.asarray(np.log(q)[x])
  true_kl = float(np.sum(p * np.log(p / q)))
  for kind in ("k1", "k3"):
    np.testing.assert_allclose(float(jnp.mean(losses.kl_estimate(lp, lq, kind))), true_kl,
                               rtol=0.02)
