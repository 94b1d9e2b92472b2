"""PPO for language models: rollout -> reward -> KL penalty -> GAE -> clipped updates.

One PPO *iteration* (one step of the shared loop, one checkpointable unit):

  1. rollout: sample one response per prompt from the current policy
     (`sampling.generate`, temperature 1, sharded over the mesh);
  2. score: the reward function gives one scalar per response (the reward
     model, or a synthetic function in tests); `score_rollout` (jitted) computes
     the old policy / reference log-probs and values, folds the per-token KL
     penalty -beta * (log pi - log pi_ref) into the rewards, adds the score at
     the last response token, and runs GAE (`gae.py`);
  3. update: `epochs` passes over the rollout in shuffled minibatches, each a
     pure, sharded, donated `ppo_step(state, batch) -> (state, metrics)` whose
     losses come from the registry by name (cfg policy_loss + value_loss
     [+ kl_term when kl_in="loss"]; defaults ppo_clip + value_clip [+ kl_penalty]).
     Advantages are always GAE's.

Array layout: [B, L] over prompt + response + padding (L = max_prompt_len +
max_new_tokens, fixed, so each jitted function compiles once); column t holds
token t and its log-prob log p(token_t | tokens_<t); `mask` marks the response.

Parameters: `state.params = {"policy": <Transformer>, "value": <critic>}` where
the critic is a ScalarHead on the policy's own hidden states
(value_head="shared") or a separate Transformer trunk + ScalarHead initialised
from the policy (value_head="separate", the default: value-loss gradients then
never move the language model). The frozen reference (the SFT policy) lives
outside the state.

Randomness is a function of (state.rng, iteration): the rollout key and the
minibatch order are `fold_in`s of it, the prompt batch is chosen by the
iteration number, and the KL coefficient / reward statistics travel in the
checkpoint's `extra`, so a killed run resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import losses as losses_lib
from cai_jax import sampling, sharding
from cai_jax.losses import fused_ce
from cai_jax.models import ScalarHead
from cai_jax.train import gae

# reward_fn(tokens [B, L] int32, mask [B, L] bool) -> scores [B] float32 (host arrays).
RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class PPOSpec:
  """Static structure of the PPO models (hashable: a jit static argument)."""

  policy_graphdef: Any
  head_graphdef: Any
  shared_value: bool


def init_value_params(shared: bool, policy_params, d_model: int, mesh: Mesh | None = None):
  """(head graphdef, critic params): a zero-initialised ScalarHead (values start at
  0), plus a copy of the policy trunk when the critic is separate. With a mesh
  the head is placed by its logical axes (the trunk copy keeps the policy's)."""
  head_gd, head_state = nnx.split(ScalarHead(d_model, rngs=nnx.Rngs(0)))
  head = jax.tree.map(jnp.zeros_like, nnx.to_pure_dict(head_state))
  if mesh is not None:
    head = sharding.reshard(head, sharding.param_shardings(head_state, mesh))
  if shared:
    return head_gd, head
  trunk = jax.tree.map(jnp.copy, policy_params)  # a copy, so donation never aliases the policy
  return head_gd, {"trunk": trunk, "head": head}


# ----------------------------------------------------------------------------- forward


def _shift_right(x: jax.Array) -> jax.Array:
  """[B, T-1] -> [B, T] with a zero column 0 (nothing predicts the first token)."""
  return jnp.pad(x, ((0, 0), (1, 0)))


# Below this many bytes of float32 logits the policy pass reads them out whole: small models
# gain nothing from chunking, and the chunked update made XLA:CPU abort with the tests' tiny
# model inside the ablation sweeps (not seen with SmolLM2-135M; cause not found).
FULL_LOGITS_BYTES = 64 << 20


def policy_forward(spec: PPOSpec, params, tokens: jax.Array, positions: jax.Array,
                   mask: jax.Array) -> dict[str, jax.Array]:
  """"logprobs", "entropy" (of the full next-token distribution) and "values",
  each [B, T], aligned with tokens and 0 outside mask. values[:, t] is the
  critic's estimate at the state before token t (read at position t - 1)."""
  policy = nnx.merge(spec.policy_graphdef, params["policy"])
  hidden, _ = policy.hidden(tokens, positions)  # [B, T, D]
  B, T = tokens.shape
  if B * (T - 1) * policy.cfg.vocab_size * 4 > FULL_LOGITS_BYTES:
    # Chunk by chunk over the sequence: [B, T-1, V] logits (and their softmax and gradient)
    # never exist at once.
    picked, entropy = fused_ce.linear_logprobs_entropy(hidden[:, :-1], policy.unembedding(),
                                                       tokens[:, 1:])
  else:
    logits = policy.logits(hidden[:, :-1]).astype(jnp.float32)  # [B, T-1, V]
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  if spec.shared_value:
    head, critic_hidden = nnx.merge(spec.head_graphdef, params["value"]), hidden
  else:
    head = nnx.merge(spec.head_graphdef, params["value"]["head"])
    critic = nnx.merge(spec.policy_graphdef, params["value"]["trunk"])
    critic_hidden, _ = critic.hidden(tokens, positions)
  values = head(critic_hidden[:, :-1])  # [B, T-1]
  out = {"logprobs": picked, "entropy": entropy, "values": values}
  return {k: jnp.where(mask, _shift_right(v), 0.0) for k, v in out.items()}


# ----------------------------------------------------------------------------- rollout scoring


def score_rollout(spec: PPOSpec, gamma: float, lam: float, whiten_advantages: bool,
                  params, ref_params, tokens, positions, mask, scores, kl_coef):
  """Everything the update needs from one rollout batch (jit with static spec/gamma/lam).

  Returns (batch, stats): batch holds old_logprobs, ref_logprobs, old_values,
  advantages, returns [B, L] (plus the inputs); stats are scalars for logging.
  """
  fwd = policy_forward(spec, params, tokens, positions, mask)
  ref = nnx.merge(spec.policy_graphdef, ref_params)
  ref_logprobs = sampling.sequence_logprobs(ref, tokens, positions, mask)  # [B, L]
  kl = jnp.where(mask, fwd["logprobs"] - ref_logprobs, 0.0)  # k1 per token
  # The score lands on the last response token of each row.
  last = jnp.argmax(jnp.where(mask, jnp.arange(mask.shape[1])[None, :], -1), axis=1)  # [B]
  at_last = jax.nn.one_hot(last, mask.shape[1], dtype=jnp.float32) * jnp.any(mask, 1)[:, None]
  rewards = -kl_coef * kl + at_last * scores[:, None]
  adv, returns = gae.gae_advantages(rewards, fwd["values"], mask, gamma=gamma, lam=lam)
  if whiten_advantages:
    adv = gae.masked_whiten(adv, mask)
  batch = dict(tokens=tokens, positions=positions, mask=mask, old_logprobs=fwd["logprobs"],
               ref_logprobs=ref_logprobs, old_values=fwd["values"], advantages=adv,
               returns=returns)
  seq_kl = jnp.sum(kl, axis=1)  # [B]
  stats = dict(kl=jnp.mean(seq_kl), kl_per_token=gae.masked_mean(kl, mask),
               entropy_rollout=gae.masked_mean(fwd["entropy"], mask),
               value_mean=gae.masked_mean(fwd["values"], mask),
               return_mean=gae.masked_mean(returns, mask),
               explained_variance=gae.explained_variance(fwd["values"], returns, mask))
  return batch, stats


# ----------------------------------------------------------------------------- update step


def loss_names(kl_in: str, policy_loss: str = "ppo_clip", value_loss: str = "value_clip",
               kl_term: str = "kl_penalty") -> tuple[str, ...]:
  """The registry losses one PPO step sums: policy, value [, KL term when kl_in="loss"]."""
  return (policy_loss, value_loss) + ((kl_term,) if kl_in == "loss" else ())


def configured_loss_names(cfg: Mapping) -> tuple[str, ...]:
  """loss_names of a ppo config (a mapping without the loss fields gets the defaults)."""
  chosen = {k: cfg[k] for k in ("policy_loss", "value_loss", "kl_term") if k in cfg}
  return loss_names(cfg["kl_in"], **chosen)


def ppo_step(spec: PPOSpec, tx, names: Sequence[str], loss_cfg: Mapping, state, batch):
  """One gradient step on one minibatch: (state, batch) -> (state, metrics).

  The TrainState's `step` counts PPO iterations and is advanced by the
  iteration, not here; the optimizer keeps its own update count.
  """
  def loss_fn(params):
    outputs = policy_forward(spec, params, batch["tokens"], batch["positions"], batch["mask"])
    total, metrics = 0.0, {}
    for name in names:
      out = losses_lib.get_loss(name)(outputs, batch, loss_cfg)
      total = total + out.total
      metrics.update(out.metrics)
    return total, metrics

  (total, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=total, grad_norm=_global_norm(grads))
  return state.replace(params=params, opt_state=opt_state), metrics


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- KL control, rewards


def update_kl_coef(coef: float, kl: float, n_samples: int, *, kind: str, target: float,
                   horizon: int) -> float:
  """Next KL coefficient. fixed: unchanged. adaptive (Ziegler et al. 2019):
  beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), where KL is
  the mean per-sequence KL of the rollout and n its number of samples."""
  if kind == "fixed":
    return coef
  if kind != "adaptive":
    raise ValueError(f"ppo.kl_controller: {kind!r}; expected fixed or adaptive")
  error = min(max(kl / target - 1.0, -0.2), 0.2)
  return coef * (1.0 + error * n_samples / horizon)


@dataclasses.dataclass(frozen=True)
class RewardStats:
  """Running mean/variance of raw scores (Welford/Chan merge), for reward_norm="running"."""

  count: float = 0.0
  mean: float = 0.0
  m2: float = 0.0

  def update(self, x: np.ndarray) -> "RewardStats":
    x = np.asarray(x, np.float64)
    n, mean, m2 = float(x.size), float(x.mean()), float(((x - x.mean()) ** 2).sum())
    total = self.count + n
    delta = mean - self.mean
    return RewardStats(total, self.mean + delta * n / total,
                       self.m2 + m2 + delta ** 2 * self.count * n / total)

  @property
  def std(self) -> float:
    return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0


def normalize_scores(scores: np.ndarray, mode: str, stats: RewardStats,
                     clip: float = 0.0) -> tuple[np.ndarray, RewardStats]:
  """Scores after the configured normalisation (none | batch | running) and clipping."""
  scores = np.asarray(scores, np.float64)
  if mode == "batch":
    scores = (scores - scores.mean()) / (scores.std() + 1e-8)
  elif mode == "running":
    stats = stats.update(scores)
    scores = (scores - stats.mean) / (stats.std + 1e-8)
  elif mode != "none":
    raise ValueError(f"ppo.reward_norm: {mode!r}; expected none, batch or running")
  if clip > 0:
    scores = np.clip(scores, -clip, clip)
  return scores.astype(np.float32), stats


# ----------------------------------------------------------------------------- the iteration


@dataclasses.dataclass(frozen=True)
class HostState:
  """What an iteration carries besides the TrainState; saved in the checkpoint's `extra`."""

  kl_coef: float
  reward_stats: RewardStats = RewardStats()

  def to_json(self) -> dict:
    return {"kl_coef": self.kl_coef, "reward_stats": dataclasses.asdict(self.reward_stats)}

  @classmethod
  def from_json(cls, d: Mapping) -> "HostState":
    return cls(float(d["kl_coef"]), RewardStats(**d.get("reward_stats", {})))


def prompt_indices(n_prompts: int, batch_size: int, iteration: int, seed: int) -> np.ndarray:
  """Prompts of one iteration: a fresh permutation per pass over the set, picked by
  position in the stream, so the choice depends on (seed, iteration) only."""
  stream = np.arange(iteration * batch_size, (iteration + 1) * batch_size)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(stream // n_prompts):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(n_prompts)
    sel = stream // n_prompts == epoch
    out[sel] = perm[stream[sel] % n_prompts]
  return out


def assemble(prompts: Sequence[Sequence[int]], sample: sampling.SampleOutput, length: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, length] int32, mask [B, length] bool): prompt, response, padding per row."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    resp = sample.row(i)
    if len(p) + len(resp) > length:
      raise ValueError(f"rollout row {i}: prompt {len(p)} + response {len(resp)} tokens exceed "
                       f"max_prompt_len + max_new_tokens = {length}")
    tokens[i, :len(p) + len(resp)] = list(p) + resp
    mask[i, len(p):len(p) + len(resp)] = True
  return tokens, mask


class PPOIteration:
  """`step_fn(state, _) -> (state, metrics)` for the shared loop: one rollout + its updates.

  Holds the static pieces (jitted functions, prompts, reward function, frozen
  reference) and the HostState, which `host` exposes for checkpointing.
  """

  def __init__(self, *, spec: PPOSpec, cfg: Mapping, tx: optax.GradientTransformation,
               mesh: Mesh, state_shardings, prompts: Sequence[Sequence[int]],
               reward_fn: RewardFn, ref_params, host: HostState, stop_ids: Sequence[int],
               pad_id: int, seed: int = 0):
    self.spec, self.cfg, self.mesh = spec, dict(cfg), mesh
    self.max_prompt_len = int(cfg["max_prompt_len"])
    self.prompts = [list(p)[-self.max_prompt_len:] for p in prompts]
    self.reward_fn, self.ref_params, self.host = reward_fn, ref_params, host
    self.stop_ids, self.pad_id, self.seed = tuple(stop_ids), int(pad_id), int(seed)
    self.length = self.max_prompt_len + int(cfg["max_new_tokens"])
    repl = sharding.replicated(mesh)
    self._score = jax.jit(functools.partial(score_rollout, spec, float(cfg["gamma"]),
                                            float(cfg["lam"]), bool(cfg["whiten_advantages"])))
    self.loss_names = configured_loss_names(cfg)
    for name in self.loss_names:
      losses_lib.get_loss(name)  # an unknown name fails here, not at the first jit trace
    self._step = jax.jit(functools.partial(ppo_step, spec, tx, self.loss_names, self.cfg),
                         in_shardings=(state_shardings, None), out_shardings=(state_shardings, repl),
                         donate_argnums=0)

  def rollout(self, state, iteration: int):
    """Samples, scores and scores again: (device batch, stats, raw scores, lengths)."""
    cfg = self.cfg
    idx = prompt_indices(len(self.prompts), int(cfg["rollout_batch_size"]), iteration, self.seed)
    prompts = [self.prompts[i] for i in idx]
    key = jax.random.fold_in(state.rng, iteration)
    sample = sampling.generate(self.spec.policy_graphdef, state.params["policy"], prompts,
                               rng=key, max_new_tokens=int(cfg["max_new_tokens"]),
                               stop_ids=self.stop_ids, pad_id=self.pad_id, mesh=self.mesh,
                               batch_size=int(cfg["sample_batch_size"]))
    sampling.release_prepared()  # the policy changes before the next rollout: free its decode copy
    tokens, mask = assemble(prompts, sample, self.length, self.pad_id)
    raw = np.asarray(self.reward_fn(tokens, mask), np.float32)
    scores, stats = normalize_scores(raw, cfg["reward_norm"], self.host.reward_stats,
                                     float(cfg["reward_clip"]))
    self.host = dataclasses.replace(self.host, reward_stats=stats)
    positions = np.broadcast_to(np.arange(self.length, dtype=np.int32), tokens.shape)
    dev = sharding.shard_global_batch(dict(tokens=tokens, positions=positions, mask=mask,
                                           scores=scores), self.mesh)
    in_reward = self.host.kl_coef if cfg["kl_in"] == "reward" else 0.0
    batch, stats = self._score(state.params, self.ref_params, dev["tokens"], dev["positions"],
                               dev["mask"], dev["scores"], jnp.float32(in_reward))
    return batch, stats, raw, sample.lengths

  def __call__(self, state, _batch=None):
    cfg = self.cfg
    iteration = int(state.step)
    t0 = time.perf_counter()
    batch, rstats, raw, lengths = self.rollout(state, iteration)
    host_batch = sharding.to_host(dict(batch))
    t1 = time.perf_counter()
    n, mb = len(raw), int(cfg["minibatch_size"])
    step_metrics = []
    for epoch in range(int(cfg["epochs"])):
      order_key = jax.random.fold_in(jax.random.fold_in(state.rng, iteration), 1 + epoch)
      order = np.asarray(jax.random.permutation(order_key, n))
      for start in range(0, n, mb):
        rows = order[start:start + mb]
        minibatch = {k: v[rows] for k, v in host_batch.items()}
        if cfg["kl_in"] == "loss":
          minibatch["kl_coef"] = np.float32(self.host.kl_coef)
        state, m = self._step(state, sharding.shard_global_batch(minibatch, self.mesh))
        step_metrics.append(m)
    update = {k: float(np.mean([float(m[k]) for m in step_metrics])) for k in step_metrics[0]}
    t2 = time.perf_counter()
    stats = {k: float(v) for k, v in rstats.items()}
    metrics = dict(update, **stats, reward_mean=float(raw.mean()), reward_std=float(raw.std()),
                   kl_coef=self.host.kl_coef, response_length=float(np.mean(lengths)),
                   rollout_time=t1 - t0, update_time=t2 - t1)
    metrics["entropy"] = update.get("entropy", stats["entropy_rollout"])
    new_coef = update_kl_coef(self.host.kl_coef, stats["kl"], n, kind=cfg["kl_controller"],
                              target=float(cfg["kl_target"]), horizon=int(cfg["kl_horizon"]))
    self.host = dataclasses.replace(self.host, kl_coef=new_coef)
    return state.replace(step=state.step + 1), metrics
