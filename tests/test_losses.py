"""The loss registry and sft_ce against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.losses import LossOutput, get_loss, lm_logits, register_loss


def _np_sft_ce(logits, tokens, mask):
  logits = logits[:, :-1].astype(np.float64)
  targets, m = tokens[:, 1:], mask[:, 1:].astype(np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  nll = logz - picked
  acc = (logits.argmax(-1) == targets).astype(np.float64)
  return (nll * m).sum() / m.sum(), (acc * m).sum() / m.sum(), m.sum()


def test_sft_ce_matches_numpy_on_masked_response_tokens():
  rng = np.random.default_rng(0)
  B, T, V = 3, 7, 11
  logits = rng.normal(size=(B, T, V)).astype(np.float32) * 3
  tokens = rng.integers(0, V, size=(B, T))
  mask = np.zeros((B, T), np.int32)
  mask[0, 3:] = 1
  mask[1, 1:4] = 1
  mask[2, 6] = 1
  out = get_loss("sft_ce")({"logits": jnp.asarray(logits)}, {"tokens": jnp.asarray(tokens),
                                                             "loss_mask": jnp.asarray(mask)}, {})
  loss, acc, n = _np_sft_ce(logits, tokens, mask)
  np.testing.assert_allclose(out.total, loss, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["accuracy"], acc, rtol=1e-6)
  assert float(out.metrics["n_tokens"]) == n == 8  # 4 + 3 + 1 masked targets


def test_sft_ce_ignores_prompt_tokens_entirely():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  tokens = rng.integers(0, 5, size=(2, 6))
  mask = np.array([[0, 0, 0, 1, 1, 1]] * 2)
  base = get_loss("sft_ce")({"logits": jnp.asarray(logits)}, {"tokens": tokens, "loss_mask": mask}, {})
  # Logits at positions 0..1 predict prompt tokens 1..2 (masked): changing them changes nothing.
  logits2 = logits.copy()
  logits2[:, :2] += rng.normal(size=(2, 2, 5)).astype(np.float32) * 10
  tokens2 = tokens.copy()
  tokens2[:, :3] = (tokens2[:, :3] + 1) % 5
  other = get_loss("sft_ce")({"logits": jnp.asarray(logits2)}, {"tokens": tokens2, "loss_mask": mask}, {})
  np.testing.assert_allclose(base.total, other.total, rtol=1e-6)


def test_sft_ce_of_empty_mask_is_zero_not_nan():
  out = get_loss("sft_ce")({"logits": jnp.ones((1, 4, 3))}, {"tokens": jnp.zeros((1, 4), jnp.int32),
                                                              "loss_mask": jnp.zeros((1, 4))}, {})
  assert float(out.total) == 0.0 and float(out.metrics["n_tokens"]) == 0.0


def test_registry_names_unknown_losses_and_refuses_duplicates():
  with pytest.raises(KeyError, match="sft_ce"):
    get_loss("no_such_loss")

  @register_loss("_test_only_loss")
  def one(outputs, batch, cfg):
    return LossOutput(total=jnp.zeros(()), metrics={})

  assert get_loss("_test_only_loss") is one
  with pytest.raises(ValueError, match="already registered"):
    register_loss("_test_only_loss")(lambda o, b, c: None)


@pytest.mark.parametrize("chunk_tokens", [256, 6])  # one chunk; several chunks (6 -> 3 positions x 2 rows)
def test_fused_sft_ce_matches_the_logits_path_in_value_and_gradient(monkeypatch, chunk_tokens):
  from cai_jax.losses import fused_ce
  monkeypatch.setattr(fused_ce, "CHUNK_TOKENS", chunk_tokens)
  rng = np.random.default_rng(4)
  B, T, D, V = 2, 9, 8, 37
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  batch = {"tokens": jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
           "loss_mask": jnp.asarray(rng.integers(0, 2, (B, T)), jnp.int32)}
  sft_ce = get_loss("sft_ce")

  def via_logits(h, w):  # the plain path, with logits rebuilt as a non-fused loss would
    return sft_ce({"logits": lm_logits({"hidden": h, "head": w})}, batch, {})

  def fused(h, w):
    return sft_ce({"hidden": h, "head": w}, batch, {})

  ref, out = via_logits(hidden, head), jax.jit(fused)(hidden, head)
  for k in ("loss", "accuracy", "n_tokens"):
    np.testing.assert_allclose(out.metrics[k], ref.metrics[k], rtol=1e-5, atol=1e-6)
  g_ref = jax.grad(lambda h, w: via_logits(h, w).total, argnums=(0, 1))(hidden, head)
  g_out = jax.jit(jax.grad(lambda h, w: fused(h, w).total, argnums=(0, 1)))(hidden, head)
  for a, b in zip(g_out, g_ref):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
