"""PPO reward functions: the synthetic token count and the reward-model adapter."""

import jax.numpy as jnp
import numpy as np

from cai_jax import sharding
from cai_jax.train import ppo_rewards


def _rollout():
  tokens = np.array([[5, 6, 97, 98, 7, 0, 0],
                     [5, 97, 97, 0, 0, 0, 0],
                     [9, 9, 9, 9, 97, 1, 2]], np.int32)
  mask = np.array([[0, 0, 1, 1, 1, 0, 0],
                   [0, 1, 1, 0, 0, 0, 0],
                   [0, 0, 0, 0, 0, 0, 0]], bool)  # row 2: an empty answer
  return tokens, mask


def test_last_response_index():
  np.testing.assert_array_equal(ppo_rewards.last_response_index(_rollout()[1]), [4, 2, 0])


def test_token_count_counts_only_answer_tokens():
  tokens, mask = _rollout()
  reward = ppo_rewards.token_count_reward([97, 98])
  np.testing.assert_array_equal(reward(tokens, mask), [2, 2, 0])  # row 2's 97 is in the prompt


def test_reward_model_adapter_reads_the_last_answer_token_in_padded_chunks():
  tokens, mask = _rollout()
  calls = []

  def fake_scores(graphdef, params, toks, positions, last):  # traced under jit
    calls.append(toks.shape)
    at_last = jnp.take_along_axis(toks, last[:, None], axis=1)[:, 0]
    # "score" = the id at `last`, plus 0 * positions-check (positions must be arange).
    ok = jnp.all(positions == jnp.arange(toks.shape[1])[None, :])
    return jnp.where(ok, at_last * params["scale"], jnp.nan)

  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  fn = ppo_rewards.reward_model_fn(fake_scores, None, {"scale": 0.5}, mesh=mesh, batch_size=2)
  np.testing.assert_allclose(fn(tokens, mask), [3.5, 48.5, 4.5])  # row 2: empty -> index 0
  assert calls == [(2, 7)]  # compiled once: the last chunk of one row was padded to two
