"""The sampler: cache decoding vs recomputation, masks, stops, sharding, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cai_jax import sampling, sharding
from cai_jax.sampling import selection
from cai_jax.models import Transformer

PROMPTS = [[5, 9, 13], [7] * 11, [1, 2, 3, 4, 5, 6, 7], [200]]  # ragged on purpose


@pytest.fixture(scope="module")
def tiny():
  from cai_jax.models import get_model_config
  cfg = get_model_config("tiny")
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  return graphdef, nnx.to_pure_dict(state)


def _full_logprobs(graphdef, params, ids):
  """log_softmax of a full (cache-free) forward over ids: [T, V]."""
  model = nnx.merge(graphdef, params)
  logits, _ = model(jnp.asarray([ids]), jnp.arange(len(ids))[None])
  return np.asarray(jax.nn.log_softmax(logits[0], -1))


def test_greedy_cached_decoding_matches_full_recomputation(tiny):
  graphdef, params = tiny
  out = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(0), max_new_tokens=12,
                          temperature=0.0)
  assert out.tokens.shape == (4, 12) and (out.lengths == 12).all()
  for i, prompt in enumerate(PROMPTS):
    gen = out.row(i)
    ref = _full_logprobs(graphdef, params, prompt + gen)  # [T, V]
    steps = ref[len(prompt) - 1:len(prompt) - 1 + len(gen)]  # predictions of each new token
    # Cached log-probs equal the recomputed ones, and each token is the recomputed argmax.
    np.testing.assert_allclose(out.logprobs[i], steps[np.arange(len(gen)), gen], atol=1e-5)
    np.testing.assert_array_less(steps.max(-1) - steps[np.arange(len(gen)), gen], 1e-5)


def test_score_continuations_equals_generation_logprobs(tiny):
  graphdef, params = tiny
  out = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(1), max_new_tokens=9,
                          temperature=1.0)
  conts = [out.row(i) for i in range(len(PROMPTS))]
  scores = sampling.score_continuations(graphdef, params, PROMPTS, conts, batch_size=3)
  for i in range(len(PROMPTS)):
    np.testing.assert_allclose(scores[i], out.logprobs[i, :len(conts[i])], atol=1e-5)


def test_sequence_logprobs_masks_and_shifts(tiny):
  graphdef, params = tiny
  ids = [3, 1, 4, 1, 5, 9]
  mask = jnp.asarray([[False, False, True, True, False, True]])
  got = sampling.sequence_logprobs(nnx.merge(graphdef, params), jnp.asarray([ids]),
                                   jnp.arange(6)[None], mask)
  ref = _full_logprobs(graphdef, params, ids)
  expected = [0, 0, ref[1, 4], ref[2, 1], 0, ref[4, 9]]
  np.testing.assert_allclose(got[0], expected, atol=1e-6)


def _np_top_k(x, k):
  kth = np.sort(x, -1)[:, -k][:, None]
  return np.where(x >= kth, x, -np.inf)


def _np_top_p(x, p):
  out = np.full_like(x, -np.inf)
  for b in range(x.shape[0]):
    order = np.argsort(-x[b], kind="stable")
    probs = np.exp(x[b] - x[b].max())
    probs /= probs.sum()
    before = 0.0
    for j in order:
      if before >= p:
        break
      out[b, j] = x[b, j]
      before += probs[j]
  return out


@pytest.mark.parametrize("k", [1, 3, 17])
def test_top_k_mask_matches_numpy(k):
  x = np.random.default_rng(k).normal(size=(5, 40)).astype(np.float32)
  np.testing.assert_array_equal(selection.top_k_mask(jnp.asarray(x), k), _np_top_k(x, k))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_mask_matches_numpy(p):
  x = 2.0 * np.random.default_rng(7).normal(size=(6, 50)).astype(np.float32)
  np.testing.assert_array_equal(selection.top_p_mask(jnp.asarray(x), p), _np_top_p(x, p))


@pytest.mark.parametrize("vocab_axis", [-1, 0])
def test_greedy_select_matches_argmax_and_log_softmax(vocab_axis):
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(5, 300)).astype(np.float32)
  logits[1, [7, 40, 299]] = 9.0  # ties at the max: the first index wins, as in np.argmax
  logits[2, :] = -2.5  # a flat row
  x = jnp.asarray(logits if vocab_axis == -1 else logits.T)
  for rows in (x, x[:1] if vocab_axis == -1 else x[:, :1]):  # the one-row fast path too
    tokens, logp = selection.select(rows, None, 0, 1.0, 1.0, greedy=True, top_k=0, use_top_p=False,
                                    vocab_axis=vocab_axis)
    ref = np.asarray(rows if vocab_axis == -1 else rows.T)
    np.testing.assert_array_equal(tokens, ref.argmax(-1))
    expect = jax.nn.log_softmax(ref, -1)[np.arange(len(ref)), ref.argmax(-1)]
    np.testing.assert_allclose(logp, expect, rtol=1e-6, atol=1e-6)


def test_top_k_one_sampling_is_greedy(tiny):
  graphdef, params = tiny
  greedy = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(0), max_new_tokens=8,
                             temperature=0.0)
  top1 = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(5), max_new_tokens=8,
                           temperature=1.3, top_k=1)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)


def test_per_row_stop_tokens_and_lengths(tiny):
  graphdef, params = tiny
  free = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(0), max_new_tokens=10,
                           temperature=0.0)
  # Row 0 stops at the token it produced at step 4, row 1 at step 0; row 2 by a length cap of 3;
  # row 3 has no stop and the full budget.
  stops = [[free.tokens[0, 4]], [free.tokens[1, 0], 999], [], []]
  out = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(0),
                          max_new_tokens=[10, 10, 3, 10], temperature=0.0, stop_ids=stops, pad_id=-7)
  first = lambda row, tok: list(row).index(tok) + 1  # noqa: E731
  expected = [first(free.tokens[0], free.tokens[0, 4]), 1, 3, 10]
  np.testing.assert_array_equal(out.lengths, expected)
  for i, n in enumerate(expected):
    np.testing.assert_array_equal(out.tokens[i, :n], free.tokens[i, :n])
    assert (out.tokens[i, n:] == -7).all() and (out.logprobs[i, n:] == 0).all()


def test_sampling_is_deterministic_and_independent_of_batching(tiny):
  graphdef, params = tiny
  kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
  a = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(3), **kw)
  b = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(3), batch_size=2, **kw)
  c = sampling.generate(graphdef, params, PROMPTS, rng=jax.random.key(4), **kw)
  alone = sampling.generate(graphdef, params, [PROMPTS[2]], rng=jax.random.key(3), row_ids=[2], **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(alone.tokens[0], a.tokens[2])
  assert not np.array_equal(a.tokens, c.tokens)


def test_sharded_sampling_equals_unsharded(tiny):
  graphdef, params = tiny
  kw = dict(rng=jax.random.key(11), max_new_tokens=10, temperature=0.8, top_k=50)
  prompts = PROMPTS + [[9, 8, 7, 6], [42] * 5]
  ref = sampling.generate(graphdef, params, prompts, **kw)
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  got = sampling.generate(graphdef, params, prompts, mesh=mesh, **kw)
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
  scores = sampling.score_continuations(graphdef, params, prompts,
                                        [ref.row(i) for i in range(len(prompts))], mesh=mesh)
  for i in range(len(prompts)):
    np.testing.assert_allclose(scores[i], ref.logprobs[i, :ref.lengths[i]], atol=1e-5)


def test_bad_arguments_are_rejected(tiny):
  graphdef, params = tiny
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampling.generate(graphdef, params, [[1], []], rng=jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match="top_p"):
    sampling.generate(graphdef, params, [[1]], rng=jax.random.key(0), max_new_tokens=2, top_p=0)


@pytest.mark.parametrize("tied", [True, False])
def test_decode_step_logits_match_the_transformer_full_forward(tied):
  from cai_jax.models import KVCache, decode, get_model_config
  cfg = get_model_config("tiny").replace(tie_embeddings=tied)
  model = Transformer(cfg, rngs=nnx.Rngs(2))
  params = nnx.to_pure_dict(nnx.split(model)[1])
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 10)), jnp.int32)
  lengths = jnp.asarray([4, 7, 5])  # ragged prompts, right-padded
  full, _ = model(tokens, jnp.broadcast_to(jnp.arange(10), (3, 10)))  # [B, T, V]
  cache = KVCache.zeros(cfg, 3, 7)
  _, cache = model(tokens[:, :7], jnp.broadcast_to(jnp.arange(7), (3, 7)), cache)  # prefill, width 7
  layer_cache, weights = decode.cache_from_prefill(cache, 3), decode.unstack_params(params)
  for step in range(3):  # each row continues with its true next token, at its own position
    pos = lengths + step
    visible = decode.visible_slots(lengths, 7, jnp.int32(step), 10)
    logits, layer_cache = decode.decode_step(cfg, weights, tokens[jnp.arange(3), pos], pos,
                                             layer_cache, jnp.int32(7 + step), visible)
    np.testing.assert_allclose(logits.T, full[jnp.arange(3), pos], atol=1e-5)
