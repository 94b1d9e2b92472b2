"""Batched, jitted generation and continuation scoring.

Generation = one prefill of right-padded prompts into a preallocated KV cache,
then a `lax.while_loop` that decodes one token per row per step. The model's
cache semantics make ragged batches simple: slot s holds position s, the
prefill writes positions 0..T-1 of every row, and row b then decodes from its
own length (its first new token goes to slot len_b, overwriting pad garbage
that no real token ever attends to, because a token attends to slots <= its
position).

Shapes are bucketed (batch and new tokens to powers of two, prompt length to
quarter-octave steps) so a run with many prompt lengths compiles only a
handful of programs.

Randomness: row i of a call draws its token at step t with
`fold_in(fold_in(rng, row_ids[i]), t)`, so a prompt's sample depends only on the
key, its row id and its text — not on batch size, bucketing, chunking or the
mesh. That is what makes resumed data generation reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cai_jax import sharding
from cai_jax.losses import fused_ce
from cai_jax.sampling import selection
from cai_jax.models import decode
from cai_jax.models.transformer import KVCache

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """What `generate` returns, one row per prompt (in the order given)."""

  tokens: np.ndarray  # [B, N] int32 generated ids; pad_id after the stop token / row limit
  # [B, N] float32: log p(token) under the model's own next-token distribution at
  # temperature 1 with no top-k/top-p truncation (log_softmax of the raw logits);
  # 0 after the row ended. This is what PPO and KL terms need.
  logprobs: np.ndarray
  lengths: np.ndarray  # [B] int32 generated tokens per row, including the stop token

  def row(self, i: int) -> list[int]:
    """Generated ids of row i, stop token included."""
    return self.tokens[i, :self.lengths[i]].tolist()


def next_pow2(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  n = max(int(n), minimum, 1)
  return 1 << (n - 1).bit_length()


def length_bucket(n: int, minimum: int = 16) -> int:
  """n rounded up to a quarter-octave step (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ...):
  at most 25% padding (prefill cost grows with it) and four shapes per doubling."""
  n = max(int(n), minimum)
  step = max(next_pow2(n) // 8, 1)
  return -(-n // step) * step


# ----------------------------------------------------------------------------- the jitted core


@flax.struct.dataclass
class DecodeState:
  """Everything the decode loop carries from one step to the next."""

  step: jax.Array  # [] int32: tokens generated so far (per row, before stopping)
  last: jax.Array  # [B] int32: the token to feed next
  done: jax.Array  # [B] bool: row has stopped
  tokens: jax.Array  # [B, N] int32
  logprobs: jax.Array  # [B, N] float32
  lengths: jax.Array  # [B] int32
  cache: list  # per layer (keys [B, K, H, S], values [B, K, S, H]) (models/decode.py)


def _record(s: DecodeState, tok, logp, stop_table, max_lengths, pad_id) -> DecodeState:
  """Writes step s.step's token of every live row and updates the stop flags."""
  live = ~s.done
  tokens = s.tokens.at[:, s.step].set(jnp.where(live, tok, pad_id))
  logprobs = s.logprobs.at[:, s.step].set(jnp.where(live, logp, 0.0))
  lengths = s.lengths + live.astype(jnp.int32)
  hit_stop = jnp.any(tok[:, None] == stop_table, axis=-1)
  done = s.done | hit_stop | (lengths >= max_lengths)
  return s.replace(step=s.step + 1, last=tok, done=done, tokens=tokens, logprobs=logprobs,
                   lengths=lengths)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_new", "greedy", "top_k", "use_top_p",
                                             "cache_sharding"))
def _generate_core(graphdef, params, layer_weights, prompts, prompt_lengths, row_keys, max_lengths,
                   stop_table, temperature, top_p, pad_id, *, n_new: int, greedy: bool, top_k: int,
                   use_top_p: bool, cache_sharding: NamedSharding | None):
  """prompts [B, T] right-padded; prompt_lengths, max_lengths [B]; stop_table [B, M] (-1 = none).

  The prefill runs the Transformer itself; the decode loop runs `decode.decode_step`
  over `layer_weights` (the same params, split per layer; see models/decode.py).
  """
  model = nnx.merge(graphdef, params)
  B, T = prompts.shape
  cache = KVCache.zeros(model.cfg, B, T)
  if cache_sharding is not None:
    cache = jax.lax.with_sharding_constraint(cache, KVCache(cache_sharding, cache_sharding))
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  hidden, cache = model.hidden(prompts, positions, cache)  # [B, T, D]
  last_hidden = jnp.take_along_axis(hidden, (prompt_lengths - 1)[:, None, None], axis=1)
  logits = model.logits(last_hidden)[:, 0]  # [B, V]
  select = functools.partial(selection.select, row_keys=row_keys, temperature=temperature,
                             top_p=top_p, greedy=greedy, top_k=top_k, use_top_p=use_top_p)
  record = functools.partial(_record, stop_table=stop_table, max_lengths=max_lengths, pad_id=pad_id)

  state = DecodeState(step=jnp.zeros((), jnp.int32), last=jnp.zeros((B,), jnp.int32),
                      done=jnp.zeros((B,), bool), tokens=jnp.full((B, n_new), pad_id, jnp.int32),
                      logprobs=jnp.zeros((B, n_new), jnp.float32),
                      lengths=jnp.zeros((B,), jnp.int32), cache=decode.cache_from_prefill(cache, n_new))
  state = record(state, *select(logits, step=0))

  def cond(s: DecodeState):
    return (s.step < n_new) & ~jnp.all(s.done)

  def body(s: DecodeState) -> DecodeState:
    # The token generated at step t-1 has position len_b + t - 1 and goes to slot T + t - 1.
    slot = T + s.step - 1
    visible = decode.visible_slots(prompt_lengths, T, slot - T, T + n_new)
    logits, cache = decode.decode_step(model.cfg, layer_weights, s.last, prompt_lengths + s.step - 1,
                                       s.cache, slot, visible)
    return record(s.replace(cache=cache), *select(logits, step=s.step, vocab_axis=0))

  state = jax.lax.while_loop(cond, body, state)
  return state.tokens, state.logprobs, state.lengths


# ----------------------------------------------------------------------------- host wrapper


def _per_row(value, n: int, name: str) -> list:
  """An int (or a flat sequence of ints for stop ids) for every row, or one per row."""
  if name == "stop_ids":
    value = list(value)
    if value and isinstance(value[0], (list, tuple, np.ndarray)):
      if len(value) != n:
        raise ValueError(f"stop_ids: {len(value)} per-row lists for {n} prompts")
      return [tuple(int(t) for t in v) for v in value]
    return [tuple(int(t) for t in value)] * n
  if isinstance(value, (int, np.integer)):
    return [int(value)] * n
  value = [int(v) for v in value]
  if len(value) != n:
    raise ValueError(f"{name}: {len(value)} values for {n} prompts")
  return value


def _sample_shardings(graphdef, params, mesh: Mesh | None):
  """Places params with the "sample" rules; returns (params, cache sharding or None)."""
  if mesh is None:
    return params, None
  abstract = nnx.eval_shape(lambda: nnx.merge(graphdef, params))
  shardings = sharding.param_shardings(nnx.state(abstract), mesh, "sample")
  params = sharding.reshard(params, shardings)
  # Cache [L, B, S, K, H]: batch over the data axes, kv heads over `tensor` where they divide.
  spec = sharding.logical_to_spec(("layers", "batch", None, "kv_heads", None),
                                  (1, _data_shards(mesh), 1, abstract.cfg.n_kv_heads, 1), mesh,
                                  sharding.SAMPLE_RULES)
  return params, NamedSharding(mesh, spec)


# The last (params, mesh) prepared for decoding and the result: resharded params,
# their per-layer decode copy and the cache sharding. Sampling the same params
# again (data generation, evals) reuses it; new params (PPO) replace it. While
# cached, one extra copy of the weights is alive.
_PREPARED: list = []


def release_prepared() -> None:
  """Drops the cached decode copy of the last params sampled (see `_PREPARED`): for callers
  that sample params once and then change them (PPO's rollouts), so the copy is not held
  through the update that follows."""
  _PREPARED.clear()


def _prepare(graphdef, params, mesh: Mesh | None):
  """(params on the mesh, decode weights, cache sharding), reused for the same params."""
  if _PREPARED and _PREPARED[0][0] is params and _PREPARED[0][1] is mesh:
    return _PREPARED[0][2]
  placed, cache_sharding = _sample_shardings(graphdef, params, mesh)
  prepared = (placed, decode.unstack_params(placed), cache_sharding)
  _PREPARED[:] = [(params, mesh, prepared)]
  return prepared


def _data_shards(mesh: Mesh | None) -> int:
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


def generate(graphdef, params, prompts: Sequence[Sequence[int]], *, rng: jax.Array,
             max_new_tokens: int | Sequence[int], temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, stop_ids: Sequence[int] | Sequence[Sequence[int]] = (),
             pad_id: int = 0, mesh: Mesh | None = None, max_prompt_len: int | None = None,
             batch_size: int = 32, row_ids: Sequence[int] | None = None) -> SampleOutput:
  """Samples continuations of token-id prompts; any number of prompts.

  temperature 0 = greedy. `max_new_tokens` and `stop_ids` may be given per row
  (a list of ints / a list of id lists). Prompts longer than `max_prompt_len`
  keep their last tokens (a warning says so). Prompts are grouped by length
  into chunks of at most `batch_size` rows; `row_ids` (default 0..n-1) seed
  each row's randomness (see the module docstring).
  """
  n = len(prompts)
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  prompts = [list(map(int, p)) for p in prompts]
  if any(not p for p in prompts):
    raise ValueError(f"prompt {next(i for i, p in enumerate(prompts) if not p)} is empty")
  if max_prompt_len is not None and any(len(p) > max_prompt_len for p in prompts):
    log.warning("generate: %d prompt(s) longer than max_prompt_len=%d keep their last tokens",
                sum(len(p) > max_prompt_len for p in prompts), max_prompt_len)
    prompts = [p[-max_prompt_len:] for p in prompts]
  max_new = _per_row(max_new_tokens, n, "max_new_tokens")
  if any(m <= 0 for m in max_new):
    raise ValueError("max_new_tokens must be positive")
  stops = _per_row(stop_ids, n, "stop_ids")
  row_ids = list(range(n)) if row_ids is None else [int(r) for r in row_ids]
  n_out = max(max_new, default=1)
  out = SampleOutput(tokens=np.full((n, n_out), pad_id, np.int32),
                     logprobs=np.zeros((n, n_out), np.float32), lengths=np.zeros((n,), np.int32))
  if n == 0:
    return out

  params, layer_weights, cache_sharding = _prepare(graphdef, params, mesh)
  shards = _data_shards(mesh)
  order = sorted(range(n), key=lambda i: -len(prompts[i]))  # similar lengths share a bucket
  chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
  t0, generated = time.perf_counter(), 0
  for c, rows in enumerate(chunks):
    B = max(next_pow2(len(rows)), shards)
    T = length_bucket(max(len(prompts[i]) for i in rows))
    N = next_pow2(max(max_new[i] for i in rows), 16)
    M = max(1, max(len(stops[i]) for i in rows))
    tokens = np.full((B, T), pad_id, np.int32)
    lengths = np.ones((B,), np.int32)
    limits = np.ones((B,), np.int32)  # padding rows stop after one token
    table = np.full((B, M), -1, np.int32)
    ids = np.zeros((B,), np.uint32)
    for j, i in enumerate(rows):
      tokens[j, :len(prompts[i])] = prompts[i]
      lengths[j], limits[j], ids[j] = len(prompts[i]), max_new[i], row_ids[i]
      table[j, :len(stops[i])] = stops[i]
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.asarray(ids))
    batch = dict(tokens=tokens, lengths=lengths, limits=limits, table=table)
    if mesh is not None:
      # Every host holds the same global chunk; each places the rows of its own devices.
      batch = sharding.shard_global_batch(batch, mesh, "sample")
      keys = jax.random.wrap_key_data(sharding.shard_global_batch(
          {"k": np.asarray(jax.random.key_data(keys))}, mesh, "sample")["k"])
    toks, lps, lens = _generate_core(
        graphdef, params, layer_weights, batch["tokens"], batch["lengths"], keys, batch["limits"], batch["table"],
        jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.int32(pad_id), n_new=N,
        greedy=temperature == 0, top_k=int(top_k), use_top_p=top_p < 1.0,
        cache_sharding=cache_sharding)
    toks, lps, lens = sharding.to_host((toks, lps, lens))
    width = min(N, n_out)
    for j, i in enumerate(rows):
      out.tokens[i, :width], out.logprobs[i, :width], out.lengths[i] = (toks[j, :width],
                                                                        lps[j, :width], lens[j])
    generated += int(lens[:len(rows)].sum())
    if len(chunks) > 1:
      dt = time.perf_counter() - t0
      log.info("generate: chunk %d/%d, %d tokens, %.1f tokens/s", c + 1, len(chunks), generated,
               generated / max(dt, 1e-9))
  return out


# ----------------------------------------------------------------------------- scoring


def sequence_logprobs(model, tokens: jax.Array, positions: jax.Array,
                      target_mask: jax.Array) -> jax.Array:
  """log p(tokens[:, t] | tokens[:, :t]) as [B, T] float32, 0 where target_mask is False.

  Column 0 is always 0 (nothing predicts the first token). Jittable; `model` is
  a Transformer (or anything with `hidden` and `unembedding`). The read-out runs
  chunk by chunk (losses/fused_ce.py `linear_logprobs`), so [B, T, V] logits
  never exist.
  """
  hidden, _ = model.hidden(tokens, positions)  # [B, T, D]
  logp = fused_ce.linear_logprobs(hidden[:, :-1], model.unembedding(), tokens[:, 1:])  # [B, T-1]
  logp = jnp.pad(logp, ((0, 0), (1, 0)))
  return jnp.where(target_mask, logp, 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_core(graphdef, params, tokens, target_index, target_valid):
  """Log-probs [B, K] of tokens[b, target_index[b, k]] given the tokens before it; only the
  K target positions are read out (a continuation is a few tokens after a long prompt)."""
  B, T = tokens.shape
  model = nnx.merge(graphdef, params)
  positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  hidden, _ = model.hidden(tokens, positions)  # [B, T, D]
  before = jnp.maximum(target_index - 1, 0)  # the position whose hidden state predicts the target
  h = jnp.take_along_axis(hidden, before[..., None], axis=1)  # [B, K, D]
  targets = jnp.take_along_axis(tokens, target_index, axis=1)  # [B, K]
  logp = fused_ce.linear_logprobs(h, model.unembedding(), targets)
  return jnp.where(target_valid, logp, 0.0)


def score_continuations(graphdef, params, prompts: Sequence[Sequence[int]],
                        continuations: Sequence[Sequence[int]], *, pad_id: int = 0,
                        mesh: Mesh | None = None, batch_size: int = 8) -> list[np.ndarray]:
  """Per-token log-probs (float32 arrays, one per pair) of each continuation given its prompt."""
  if len(prompts) != len(continuations):
    raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
  if any(not p for p in prompts):
    raise ValueError("score_continuations: every prompt needs at least one token")
  params, _ = _sample_shardings(graphdef, params, mesh)
  shards = _data_shards(mesh)
  n = len(prompts)
  out: list[np.ndarray] = [np.zeros((0,), np.float32)] * n
  order = sorted(range(n), key=lambda i: -(len(prompts[i]) + len(continuations[i])))
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    B = max(next_pow2(len(rows)), shards)
    T = length_bucket(max(len(prompts[i]) + len(continuations[i]) for i in rows))
    K = next_pow2(max(len(continuations[i]) for i in rows))
    tokens = np.full((B, T), pad_id, np.int32)
    index = np.zeros((B, K), np.int32)  # where each continuation token sits in its row
    valid = np.zeros((B, K), bool)
    for j, i in enumerate(rows):
      p, c = list(prompts[i]), list(continuations[i])
      tokens[j, :len(p) + len(c)] = p + c
      index[j, :len(c)] = np.arange(len(p), len(p) + len(c))
      valid[j, :len(c)] = True
    batch = dict(tokens=tokens, index=index, valid=valid)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh, "sample")
    logp = np.asarray(_score_core(graphdef, params, batch["tokens"], batch["index"], batch["valid"]))
    for j, i in enumerate(rows):
      out[i] = logp[j, :len(continuations[i])].astype(np.float32)
  return out
