"""Soft-label Bradley-Terry loss (losses.py) against NumPy; A/B swap averaging of labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.cai import labels as feedback
from cai_jax.losses import get_loss


def _np_loss(ra, rb, p, w):
  d = ra - rb
  log_sig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
  nll = -(p * log_sig(d) + (1 - p) * log_sig(-d))
  return (nll * w).sum() / w.sum()


def _np_grad(ra, rb, p, w):
  """d loss / d r_a = (sigma(d) - p) w / sum w; d loss / d r_b is its negative."""
  d = ra - rb
  g = (1 / (1 + np.exp(-d)) - p) * w / w.sum()
  return g, -g


def test_loss_metrics_and_gradients_match_numpy():
  rng = np.random.default_rng(0)
  ra, rb = rng.normal(size=16) * 3, rng.normal(size=16) * 3
  p = rng.uniform(size=16)
  p[:4] = [1.0, 0.0, 0.5, 0.5]
  w = np.ones(16)
  w[-3:] = 0.0  # padding rows
  loss_fn = get_loss("bradley_terry")

  def total(ra_, rb_):
    out = loss_fn({"reward_a": ra_, "reward_b": rb_},
                  {"p_a": jnp.asarray(p, jnp.float32), "weight": jnp.asarray(w, jnp.float32)}, {})
    return out.total, out.metrics

  (value, metrics), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
      jnp.asarray(ra, jnp.float32), jnp.asarray(rb, jnp.float32))
  assert float(value) == pytest.approx(_np_loss(ra, rb, p, w), rel=1e-5)
  ga, gb = _np_grad(ra, rb, p, w)
  np.testing.assert_allclose(grads[0], ga, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads[1], gb, rtol=1e-4, atol=1e-7)
  decided = (p != 0.5) & (w > 0)
  side = np.sign(p - 0.5)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean((side * (ra - rb) > 0)[decided]))
  assert float(metrics["margin"]) == pytest.approx(np.mean((side * (ra - rb))[decided]), rel=1e-5)


def test_hard_label_limit_is_logistic_loss_and_minimum_at_label_logit():
  loss_fn = get_loss("bradley_terry")
  d = jnp.asarray([2.0])
  out = loss_fn({"reward_a": d, "reward_b": jnp.zeros(1)}, {"p_a": jnp.ones(1)}, {})
  assert float(out.total) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
  # For a soft label p the loss is minimal where sigma(d) = p, i.e. d = logit(p).
  p = 0.8
  grid = np.linspace(-4, 4, 801)
  losses = [float(loss_fn({"reward_a": jnp.asarray([x]), "reward_b": jnp.zeros(1)},
                          {"p_a": jnp.asarray([p])}, {}).total) for x in grid[::20]]
  assert grid[::20][int(np.argmin(losses))] == pytest.approx(np.log(p / (1 - p)), abs=0.2)


def test_swap_average_cancels_a_constant_position_bias():
  """A judge that adds a bias b toward the first-listed letter: averaging both orders removes it."""
  true_logit, bias = 0.7, 1.3  # log-odds that a is better; extra log-odds for "(A)"
  sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  p_ab = feedback.p_first(true_logit + bias, 0.0)  # a listed first
  p_ba = feedback.p_first(-true_logit + bias, 0.0)  # b listed first
  averaged = feedback.swap_average(p_ab, p_ba)
  assert averaged == pytest.approx(0.5 * (sig(true_logit + bias) + 1 - sig(-true_logit + bias)))
  # symmetric: exchanging a and b gives exactly 1 - p
  assert feedback.swap_average(p_ba, p_ab) == pytest.approx(1 - averaged)
  # unbiased judge: averaging returns its label unchanged
  assert feedback.swap_average(sig(true_logit), sig(-true_logit)) == pytest.approx(sig(true_logit))
  # the bias pulls the one-order label away from truth more than the average
  assert abs(averaged - sig(true_logit)) < abs(p_ab - sig(true_logit))
