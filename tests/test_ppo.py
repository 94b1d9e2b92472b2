"""PPO on the tiny model: rollout scoring, learning against a synthetic reward, KL control.

The synthetic reward counts lowercase ASCII letters in a 16-token answer. For a
per-token reward r and KL coefficient beta, the KL-regularised optimum is
pi*(a) ∝ pi_ref(a) exp(r(a) / beta), so with a near-uniform reference its KL
and reward are known in closed form; the learning test bounds KL by it.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cai_jax import sampling, sharding
from cai_jax.models import Transformer
from cai_jax.train import gae, ppo, ppo_rewards
from cai_jax.train import state as state_lib

LETTERS = list(range(ord("a"), ord("z") + 1))
N_NEW = 16
CFG = dict(max_prompt_len=16, max_new_tokens=N_NEW, rollout_batch_size=32, sample_batch_size=32,
           minibatch_size=16, epochs=2, gamma=1.0, lam=0.95, whiten_advantages=True,
           kl_in="reward", kl_estimator="k3", reward_norm="none", reward_clip=0.0, clip_eps=0.2,
           value_clip_eps=0.2, value_coef=0.5, entropy_coef=0.0, kl_controller="fixed",
           kl_target=1.0, kl_horizon=1000)


class TinyPPO:
  """A tiny random policy (= its own reference) and one compiled PPOIteration."""

  def __init__(self, tiny_cfg, cfg=CFG, shared=True, lr=3e-3):
    self.mesh = sharding.make_mesh({"data": 2, "tensor": 4})
    self.model_cfg = tiny_cfg
    gd, policy, _ = sharding.init_sharded(lambda: Transformer(tiny_cfg, rngs=nnx.Rngs(0)), self.mesh)
    head_gd, value = ppo.init_value_params(shared, policy, tiny_cfg.d_model, self.mesh)
    self.spec = ppo.PPOSpec(gd, head_gd, shared)
    self.params = {"policy": policy, "value": value}
    self.tx = optax.adam(lr)
    state = self.fresh_state()
    self.shardings = state_lib.state_shardings(state, jax.tree.map(lambda x: x.sharding,
                                                                   self.params), self.mesh)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(32, 127, size=rng.integers(3, 12))) for _ in range(64)]
    self.iteration = ppo.PPOIteration(
        spec=self.spec, cfg=cfg, tx=self.tx, mesh=self.mesh, state_shardings=self.shardings,
        prompts=prompts, reward_fn=ppo_rewards.token_count_reward(LETTERS),
        ref_params=jax.tree.map(jnp.copy, policy), host=ppo.HostState(0.0), stop_ids=(256,),
        pad_id=256)

  def fresh_state(self):
    params = jax.tree.map(jnp.copy, self.params)
    state = state_lib.create_train_state(params, self.tx, jax.random.key(0))
    if hasattr(self, "shardings"):
      state = jax.device_put(state, self.shardings)
    return state

  def run(self, kl_coef: float, n: int):
    self.iteration.host = ppo.HostState(kl_coef)
    state = jax.device_put(self.fresh_state(), self.shardings)
    history = []
    for _ in range(n):
      state, metrics = self.iteration(state)
      history.append(metrics)
    return state, history


@pytest.fixture(scope="module")
def tiny_ppo():
  from cai_jax.models import get_model_config
  return TinyPPO(get_model_config("tiny"))


def optimum_kl_and_reward(beta: float, vocab: int = 264, n_targets: int = 26, n: int = N_NEW):
  """KL and reward per answer of pi* ∝ pi_ref exp(r / beta) for a uniform reference."""
  p0 = n_targets / vocab
  z = p0 * math.exp(1 / beta) + 1 - p0  # E_ref[exp(r / beta)] per token
  p_star = p0 * math.exp(1 / beta) / z
  return n * (p_star / beta - math.log(z)), n * p_star


def test_first_rollout_matches_direct_computation(tiny_ppo):
  # Policy == reference and the value head starts at 0: the rewards are the score at the
  # last answer token, so returns_t = lam^(last - t) * score and old log-probs are the
  # model's own sequence log-probs.
  it = tiny_ppo.iteration
  it.host = ppo.HostState(0.1)
  state = tiny_ppo.fresh_state()
  batch, stats, raw, lengths = it.rollout(state, iteration=0)
  b = {k: np.asarray(v) for k, v in batch.items()}
  mask = b["mask"]
  np.testing.assert_array_equal(mask.sum(1), lengths)
  np.testing.assert_allclose(raw, (np.isin(b["tokens"], LETTERS) & mask).sum(1))
  model = nnx.merge(tiny_ppo.spec.policy_graphdef, state.params["policy"])
  want_lp = np.asarray(sampling.sequence_logprobs(model, jnp.asarray(b["tokens"]),
                                                  jnp.asarray(b["positions"]), jnp.asarray(mask)))
  np.testing.assert_allclose(b["old_logprobs"], want_lp, atol=1e-5)
  np.testing.assert_allclose(b["ref_logprobs"], want_lp, atol=1e-5)
  assert float(stats["kl"]) == pytest.approx(0.0, abs=1e-4)
  last = ppo_rewards.last_response_index(mask)
  t = np.arange(mask.shape[1])[None, :]
  want_ret = np.where(mask, 0.95 ** (last[:, None] - t) * raw[:, None], 0.0)
  np.testing.assert_allclose(b["returns"], want_ret, rtol=1e-5, atol=1e-5)
  want_adv = np.asarray(gae.masked_whiten(jnp.asarray(want_ret), jnp.asarray(mask)))
  np.testing.assert_allclose(b["advantages"], want_adv, rtol=1e-4, atol=1e-4)
  # The prompts were chosen by (seed, iteration) and the answers follow them.
  idx = ppo.prompt_indices(64, 32, 0, 0)
  for row, i in enumerate(idx[:4]):
    p = it.prompts[i]
    np.testing.assert_array_equal(b["tokens"][row, :len(p)], p)
    assert not mask[row, :len(p)].any() and mask[row, len(p)]


def test_reward_rises_while_kl_stays_bounded(tiny_ppo):
  beta, n = 0.5, 24
  _, hist = tiny_ppo.run(beta, n)
  reward = np.array([m["reward_mean"] for m in hist])
  kl = np.array([m["kl"] for m in hist])
  kl_star, reward_star = optimum_kl_and_reward(beta)
  assert reward[:4].mean() < 2.5  # ~26/264 * 16 = 1.6 letters per answer at the start
  assert reward[-4:].mean() > 2 * reward[:4].mean()
  assert reward[-4:].mean() < reward_star + 1.0
  assert kl.max() < 1.5 * kl_star, (kl.max(), kl_star)


def test_large_kl_coefficient_keeps_the_policy_near_the_reference(tiny_ppo):
  _, free = tiny_ppo.run(0.5, 16)
  _, held = tiny_ppo.run(5.0, 16)
  kl_free = np.mean([m["kl"] for m in free[-4:]])
  kl_held = np.mean([m["kl"] for m in held[-4:]])
  reward_held = np.mean([m["reward_mean"] for m in held[-4:]])
  assert kl_held < 1.0 and kl_held < 0.25 * kl_free, (kl_held, kl_free)
  assert reward_held < np.mean([m["reward_mean"] for m in free[-4:]]) - 1.0
  assert abs(reward_held - np.mean([m["reward_mean"] for m in held[:4]])) < 1.0


def test_adaptive_controller_formula():
  up = ppo.update_kl_coef(0.1, kl=12.0, n_samples=32, kind="adaptive", target=6.0, horizon=320)
  assert up == pytest.approx(0.1 * (1 + 0.2 * 32 / 320))  # error clipped at +0.2
  down = ppo.update_kl_coef(0.1, kl=5.4, n_samples=32, kind="adaptive", target=6.0, horizon=320)
  assert down == pytest.approx(0.1 * (1 - 0.1 * 32 / 320))
  assert ppo.update_kl_coef(0.1, kl=50.0, n_samples=32, kind="fixed", target=6.0,
                            horizon=320) == 0.1
  with pytest.raises(ValueError, match="kl_controller"):
    ppo.update_kl_coef(0.1, 1.0, 1, kind="pid", target=1.0, horizon=1)


def test_adaptive_controller_drives_kl_to_target():
  # A stand-in environment whose KL falls as beta grows (KL = 0.6 / beta): the
  # controller must move beta toward 0.6 / target, from above and from below.
  for beta0 in (0.01, 1.0):
    beta = beta0
    for _ in range(400):
      beta = ppo.update_kl_coef(beta, kl=0.6 / beta, n_samples=64, kind="adaptive", target=6.0,
                                horizon=640)
    assert 0.6 / beta == pytest.approx(6.0, rel=0.05)


def test_prompt_indices_visit_every_prompt_once_per_pass():
  seen = np.concatenate([ppo.prompt_indices(10, 4, i, seed=3) for i in range(5)])  # 2 passes
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  np.testing.assert_array_equal(ppo.prompt_indices(10, 4, 2, 3), ppo.prompt_indices(10, 4, 2, 3))
  assert not np.array_equal(seen[:10], seen[10:])


def test_running_reward_normalisation_matches_numpy():
  rng = np.random.default_rng(0)
  stats = ppo.RewardStats()
  seen = []
  for _ in range(3):
    x = rng.normal(2.0, 3.0, size=8)
    seen.append(x)
    out, stats = ppo.normalize_scores(x, "running", stats)
    allx = np.concatenate(seen)
    np.testing.assert_allclose(out, (x - allx.mean()) / (allx.std() + 1e-8), rtol=1e-5)
  out, _ = ppo.normalize_scores(x, "batch", stats, clip=0.5)
  np.testing.assert_allclose(out, np.clip((x - x.mean()) / (x.std() + 1e-8), -0.5, 0.5), rtol=1e-5)
  assert dataclasses.asdict(ppo.HostState.from_json(ppo.HostState(0.3, stats).to_json())) == \
      dataclasses.asdict(ppo.HostState(0.3, stats))
