"""Direct preference optimisation losses: DPO, IPO, soft-label DPO and robust DPO.

Each trains the policy from pairs of answers to one prompt, without a reward
model, through the implicit reward r(y) = beta * [log pi(y|x) - log pi_ref(y|x)].
Every loss here has the registry's signature and reads:

  outputs  "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected" [B]:
           log-probabilities of the two answers summed over their tokens, under
           the policy and the frozen reference. "chosen" is the pair's first
           answer, the one `p` is about (the dpo stage orients every pair so that
           it is the preferred one, p >= 0.5).
  batch    "p" [B]: probability that the first answer is the better one (AI soft
           labels, or 1/0 for a human winner); "weight" [B] (optional): 1 for real
           pairs, 0 for padding rows.
  cfg      "beta" (default 0.1); "tau" (ipo); "label_noise" (robust_dpo).

With h = [log pi(y1) - log pi_ref(y1)] - [log pi(y2) - log pi_ref(y2)] every loss
is a function of h and p alone. The losses built on a hard winner (dpo,
robust_dpo) take the side p points to and skip undecided pairs (p = 0.5).

Metrics (means over weighted pairs with a preference, p != 0.5): loss;
reward_margin = beta * h seen from the preferred answer; reward_accuracy = share
of those pairs whose implicit reward ranks the preferred answer first (beta * h > 0
when p > 0.5, < 0 when p < 0.5; ties count wrong); reward_chosen / reward_rejected
= the implicit rewards of the preferred and the other answer.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from cai_jax.losses import LossOutput, register_loss


def _log_ratio_gap(outputs: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(h, log-ratio of the first answer, of the second), each [B] float32."""
  first = (outputs["policy_chosen"] - outputs["ref_chosen"]).astype(jnp.float32)
  second = (outputs["policy_rejected"] - outputs["ref_rejected"]).astype(jnp.float32)
  return first - second, first, second


def _labels(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(p, row weight, side): side = +1 when the first answer is preferred, -1 the second, 0 neither."""
  p = batch["p"].astype(jnp.float32)
  w = batch.get("weight", jnp.ones_like(p)).astype(jnp.float32)
  return p, w, jnp.sign(p - 0.5)


def _weighted_mean(x: jax.Array, w: jax.Array) -> jax.Array:
  return (x * w).sum() / jnp.maximum(w.sum(), 1.0)


def _finish(per_pair: jax.Array, loss_weight: jax.Array, outputs, batch, beta: float) -> LossOutput:
  """The loss (weighted mean of per_pair) and the implicit-reward metrics."""
  h, first, second = _log_ratio_gap(outputs)
  _, w, side = _labels(batch)
  loss = _weighted_mean(per_pair, loss_weight)
  decided = w * jnp.abs(side)
  preferred = jnp.where(side >= 0, first, second)  # the winner's log-ratio
  other = jnp.where(side >= 0, second, first)
  metrics = {
      "loss": loss,
      "reward_margin": _weighted_mean(beta * side * h, decided),
      "reward_accuracy": _weighted_mean((side * h > 0).astype(jnp.float32), decided),
      "reward_chosen": _weighted_mean(beta * preferred, decided),
      "reward_rejected": _weighted_mean(beta * other, decided),
  }
  return LossOutput(total=loss, metrics=metrics)


def _beta(cfg: Mapping) -> float:
  return float(cfg.get("beta", 0.1))


@register_loss("dpo")
def dpo_loss(outputs, batch, cfg) -> LossOutput:
  """DPO (Rafailov et al. 2023, arXiv 2305.18290): -log sigma(beta * h), h seen from the winner.

  The winner is the side p points to; pairs with p = 0.5 carry no winner and are
  left out of the mean.
  """
  beta = _beta(cfg)
  h, _, _ = _log_ratio_gap(outputs)
  _, w, side = _labels(batch)
  per_pair = -jax.nn.log_sigmoid(beta * side * h)
  return _finish(per_pair, w * jnp.abs(side), outputs, batch, beta)


@register_loss("soft_dpo")
def soft_dpo_loss(outputs, batch, cfg) -> LossOutput:
  """Conservative / soft-label DPO: -p log sigma(beta h) - (1 - p) log sigma(-beta h).

  The Bradley-Terry cross-entropy against the label's probability (CAI's soft
  AI labels enter as they are; label smoothing eps is p = 1 - eps, the
  "conservative DPO" of Mitchell 2023). Its minimum is at sigma(beta h) = p, so
  an unsure label does not push the margin to infinity. Every weighted pair counts.
  """
  beta = _beta(cfg)
  h, _, _ = _log_ratio_gap(outputs)
  p, w, _ = _labels(batch)
  per_pair = -(p * jax.nn.log_sigmoid(beta * h) + (1.0 - p) * jax.nn.log_sigmoid(-beta * h))
  return _finish(per_pair, w, outputs, batch, beta)


@register_loss("ipo")
def ipo_loss(outputs, batch, cfg) -> LossOutput:
  """IPO (Azar et al. 2023, arXiv 2310.12036): (h - 1/(2 tau))^2 for a hard winner.

  With a label probability p this is the expectation over the Bernoulli(p)
  winner, p (h - 1/(2 tau))^2 + (1 - p) (h + 1/(2 tau))^2, minimal at
  h = (2p - 1) / (2 tau): a bounded target instead of DPO's ever-growing margin.
  h is not scaled by beta (tau is IPO's regulariser); beta only scales the
  reported implicit rewards. cfg: tau (default 0.1).
  """
  tau = float(cfg.get("tau", 0.1))
  h, _, _ = _log_ratio_gap(outputs)
  p, w, _ = _labels(batch)
  target = 0.5 / tau
  per_pair = p * jnp.square(h - target) + (1.0 - p) * jnp.square(h + target)
  return _finish(per_pair, w, outputs, batch, _beta(cfg))


@register_loss("robust_dpo")
def robust_dpo_loss(outputs, batch, cfg) -> LossOutput:
  """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409).

  For labels flipped at a known rate eps (cfg.label_noise, in [0, 0.5)), with
  l(x) = -log sigma(x) and x = beta * h seen from the labelled winner:
  [(1 - eps) l(x) - eps l(-x)] / (1 - 2 eps). Its expectation over the noise is
  DPO's loss on the clean labels (an unbiased correction, unlike label
  smoothing). It needs the reference model like DPO, and is unbounded below in h
  (the -eps l(-x) term), so it is meant for a few epochs, as in the paper.
  eps = 0 is DPO. Pairs with p = 0.5 are left out.
  """
  beta, eps = _beta(cfg), float(cfg.get("label_noise", 0.1))
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"robust_dpo: label_noise must be in [0, 0.5), got {eps}")
  h, _, _ = _log_ratio_gap(outputs)
  _, w, side = _labels(batch)
  x = beta * side * h
  per_pair = ((1.0 - eps) * -jax.nn.log_sigmoid(x) + eps * jax.nn.log_sigmoid(-x)) / (1.0 - 2.0 * eps)
  return _finish(per_pair, w * jnp.abs(side), outputs, batch, beta)
