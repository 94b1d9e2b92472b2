"""Memory (issue 18): the chunked read-out gives the full-logits values, and host copies are freed.

Scoring, the HHH judge and PPO read log-probs out chunk by chunk (losses/fused_ce.py
`linear_logprobs`); each is checked here against the unchunked JAX formula and a
NumPy log-softmax of the full [B, T, V] logits, on shapes that need several chunks
and padding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cai_jax import sampling, weights
from cai_jax.losses import fused_ce
from cai_jax.models import Transformer, get_model_config
from cai_jax.train import ppo

B, T, D, V = 8, 77, 16, 50  # CHUNK_TOKENS 256 / B 8 = chunks of 32: three, the last padded


def _numpy_log_softmax(logits: np.ndarray) -> np.ndarray:
  x = logits.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def readout():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(B, T, D)).astype(np.float32)
  head = rng.normal(size=(V, D)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  return hidden, head, targets


def _full(hidden, head, targets):
  """The unchunked JAX formula: full logits, log_softmax, pick, entropy."""
  logp_all = jax.nn.log_softmax(jnp.einsum("btd,vd->btv", hidden, head), axis=-1)
  picked = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
  return picked, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def test_linear_logprobs_equal_numpy_log_softmax_over_several_padded_chunks(readout):
  hidden, head, targets = readout
  assert T % (fused_ce.CHUNK_TOKENS // B) != 0  # the shape really is padded
  ref = _numpy_log_softmax(hidden.astype(np.float64) @ head.T.astype(np.float64))
  want = np.take_along_axis(ref, targets[..., None], -1)[..., 0]
  got = np.asarray(fused_ce.linear_logprobs(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets)))
  assert got.shape == (B, T)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_linear_entropy_equals_numpy_entropy(readout):
  hidden, head, targets = readout
  ref = _numpy_log_softmax(hidden.astype(np.float64) @ head.T.astype(np.float64))
  want = -(np.exp(ref) * ref).sum(-1)
  _, got = fused_ce.linear_logprobs_entropy(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_chunked_gradients_equal_the_unchunked_gradients(readout):
  hidden, head, targets = readout
  rng = np.random.default_rng(1)
  w_lp, w_ent = (jnp.asarray(rng.normal(size=(B, T)).astype(np.float32)) for _ in range(2))

  def objective(fn):
    def f(h, w):
      lp, ent = fn(h, w, jnp.asarray(targets))
      return jnp.sum(w_lp * lp) + jnp.sum(w_ent * ent)
    return jax.grad(f, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(head))

  got_h, got_w = objective(fused_ce.linear_logprobs_entropy)
  want_h, want_w = objective(_full)
  np.testing.assert_allclose(np.asarray(got_h), np.asarray(want_h), atol=1e-4)
  np.testing.assert_allclose(np.asarray(got_w), np.asarray(want_w), atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
  cfg = get_model_config("tiny")
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  return graphdef, nnx.to_pure_dict(state)


def _model_log_softmax(graphdef, params, ids) -> np.ndarray:
  """NumPy log-softmax of the model's full [T, V] logits for one sequence."""
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray([ids]), jnp.arange(len(ids))[None])
  return _numpy_log_softmax(np.asarray(logits[0]))


def test_score_continuations_read_out_only_the_targets_and_match_full_logits(tiny):
  graphdef, params = tiny
  prompts = [[5, 9, 13], [7] * 40, [1, 2, 3, 4, 5, 6, 7]]
  conts = [[11, 12], [3] * 9, [250]]
  got = sampling.score_continuations(graphdef, params, prompts, conts, batch_size=2)
  for p, c, g in zip(prompts, conts, got):
    ref = _model_log_softmax(graphdef, params, p + c)
    want = ref[np.arange(len(p) - 1, len(p) + len(c) - 1), c]
    assert g.shape == (len(c),)
    np.testing.assert_allclose(g, want, atol=2e-5)


def test_sequence_logprobs_match_full_logits_past_one_chunk(tiny):
  graphdef, params = tiny
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 256, size=(2, 300)).astype(np.int32)  # 299 targets: two chunks of 128
  mask = np.zeros_like(tokens, bool)
  mask[:, 100:] = True
  got = np.asarray(sampling.sequence_logprobs(
      nnx.merge(graphdef, params), jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(300), (2, 300)),
      jnp.asarray(mask)))
  for b in range(2):
    ref = _model_log_softmax(graphdef, params, list(tokens[b]))
    want = np.pad(ref[np.arange(299), tokens[b, 1:]], (1, 0)) * mask[b]
    np.testing.assert_allclose(got[b], want, atol=2e-5)


@pytest.mark.parametrize("full_logits_bytes", [0, 1 << 40])  # chunked, then whole
def test_ppo_policy_forward_logprobs_and_entropy_match_full_logits(tiny, monkeypatch,
                                                                   full_logits_bytes):
  monkeypatch.setattr(ppo, "FULL_LOGITS_BYTES", full_logits_bytes)
  graphdef, params = tiny
  head_gd, value = ppo.init_value_params(True, params, get_model_config("tiny").d_model)
  spec = ppo.PPOSpec(graphdef, head_gd, True)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 256, size=(2, 24)), jnp.int32)
  mask = jnp.asarray(np.arange(24) >= 10)[None].repeat(2, 0)
  out = ppo.policy_forward(spec, {"policy": params, "value": value}, tokens,
                           jnp.broadcast_to(jnp.arange(24), (2, 24)), mask)
  for b in range(2):
    ref = _model_log_softmax(graphdef, params, list(np.asarray(tokens[b])))  # [24, V]
    lp = np.pad(ref[np.arange(23), np.asarray(tokens[b, 1:])], (1, 0))
    ent = np.pad(-(np.exp(ref) * ref).sum(-1)[:-1], (1, 0))
    np.testing.assert_allclose(np.asarray(out["logprobs"][b]), lp * np.asarray(mask[b]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["entropy"][b]), ent * np.asarray(mask[b]), atol=2e-5)


def test_streamed_safetensors_are_byte_identical_to_safetensors_save_file(tmp_path):
  from safetensors.numpy import save_file
  rng = np.random.default_rng(4)
  tensors = {"b.w": rng.normal(size=(3, 5)).astype(np.float32),
             "a.x": rng.normal(size=(7,)).astype(np.float32),
             "c": rng.normal(size=(2, 2, 2)).astype(np.float32)}
  save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
  weights.write_safetensors(tmp_path / "ours.safetensors", {k: (lambda v=v: v) for k, v in tensors.items()},
                            {k: v.shape for k, v in tensors.items()}, metadata={"format": "pt"})
  assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
