"""Direct preference optimisation: the policy trained on preference pairs, no reward model.

Losses come from the registry (losses/preference.py: dpo, ipo, soft_dpo,
robust_dpo) and see summed answer log-probabilities. `dpo_step` is a pure
function jitted by `make_dpo_step` with explicit NamedShardings and a donated
state; both answers of a pair run through one forward pass, and the read-out
to the vocabulary goes chunk by chunk (`answer_logprobs`), so [B, T, V] logits
never exist. The frozen reference is run once, before training, over every
pair; its log-probabilities are stored next to the checkpoints
(reference_logprobs.npz) and read back on resume, so a resumed run sees the
same numbers without the reference model. `train_dpo` holds out a share of the
pairs (implicit reward accuracy), trains through the shared loop (checkpoints,
resume, metrics.jsonl) and exports the policy as HF safetensors.

  python -m cai_jax dpo --config experiments/tiny.py --config.dpo.num_steps=20
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import sharding
from cai_jax.data import preferences as prefs
from cai_jax.losses import LossFn, get_loss
from cai_jax.train.state import TrainState, apply_gradients

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logprobs.npz"
CHUNK_TOKENS = 256  # rows x positions per read-out chunk (256 x 49152 float32 logits = 50 MB)

# ----------------------------------------------------------------------------- pairs -> arrays


@dataclasses.dataclass(frozen=True)
class EncodedPair:
  """A pair tokenised for DPO: prompt + answer ids of both sides and where each answer starts."""

  id: str
  ids_a: np.ndarray  # [La] int32
  start_a: int  # index of a's first answer token
  ids_b: np.ndarray  # [Lb] int32
  start_b: int
  p: float  # probability that a is the better answer


def oriented(pair: prefs.Pair) -> prefs.Pair:
  """The pair with its preferred answer first (p_a >= 0.5), so "chosen" metrics mean the winner."""
  if pair.p_a >= 0.5:
    return pair
  return dataclasses.replace(pair, a=pair.b, b=pair.a, p_a=1.0 - pair.p_a)


def encode_answer(conv, tokenizer, chat, max_len: int, where: str = "") -> tuple[np.ndarray, int]:
  """(ids, answer start) of a conversation whose last turn is the answer, as SFT encodes it.

  The prompt is every earlier turn plus the generation prompt; the answer is its
  text and the end-of-turn (or eos), the tokens the policy would sample. Too long:
  the answer keeps its first max_len - 1 tokens and the prompt its last ones.
  """
  if not conv or conv[-1][0] != "assistant":
    raise ValueError(f"{where}: expected a conversation ending in the assistant's answer, "
                     f"got roles {[r for r, _ in conv]}")
  prompt = tokenizer.encode(chat.format([{"role": r, "content": c} for r, c in conv[:-1]],
                                        add_generation_prompt=True))
  eot = chat.end_of_turn()
  answer = (tokenizer.encode(conv[-1][1] + eot) if eot
            else tokenizer.encode(conv[-1][1]) + [tokenizer.eos_id])[:max_len - 1]
  if len(prompt) + len(answer) > max_len:
    prompt = prompt[-(max_len - len(answer)):]  # at least one token: the answer has < max_len
  return np.asarray(prompt + answer, np.int32), len(prompt)


def encode_pair(pair: prefs.Pair, tokenizer, chat, max_len: int) -> EncodedPair:
  ids_a, start_a = encode_answer(pair.a, tokenizer, chat, max_len, f"pair {pair.id} (a)")
  ids_b, start_b = encode_answer(pair.b, tokenizer, chat, max_len, f"pair {pair.id} (b)")
  return EncodedPair(pair.id, ids_a, start_a, ids_b, start_b, float(pair.p_a))


def pair_batch(pairs: Sequence[EncodedPair], batch_size: int, pad_id: int, max_len: int,
               ref: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """tokens_a/b, mask_a/b [B, L] (mask 1 on answer tokens), p, weight [B] (0 = padding row) and,
  given ref [n, 2], ref_a/ref_b [B]. L: the longest side rounded up to a multiple of 16."""
  longest = max([max(len(e.ids_a), len(e.ids_b)) for e in pairs] + [1])
  L = min(-(-longest // 16) * 16, -(-max_len // 16) * 16)
  B = batch_size
  out = {k: np.full((B, L), pad_id, np.int32) for k in ("tokens_a", "tokens_b")}
  out.update(mask_a=np.zeros((B, L), np.int32), mask_b=np.zeros((B, L), np.int32),
             p=np.full(B, 0.5, np.float32), weight=np.zeros(B, np.float32))
  for i, e in enumerate(pairs):
    for side, ids, start in (("a", e.ids_a, e.start_a), ("b", e.ids_b, e.start_b)):
      out[f"tokens_{side}"][i, :len(ids)] = ids
      out[f"mask_{side}"][i, start:len(ids)] = 1
    out["p"][i], out["weight"][i] = e.p, 1.0
  if ref is not None:  # padding rows get 0: their weight is 0
    for j, side in enumerate("ab"):
      out[f"ref_{side}"] = np.zeros(B, np.float32)
      out[f"ref_{side}"][:len(pairs)] = ref[:, j]
  return out


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Pair indices of batch `step`: epochs of seeded permutations read in order, a pure function
  of (seed, step), so a resumed run draws what an uninterrupted one would."""
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(flat // n):
    here = flat // n == epoch
    out[here] = np.random.default_rng([seed, int(epoch)]).permutation(n)[flat[here] % n]
  return out


# ----------------------------------------------------------------------------- log-probs and the step


def answer_logprobs(hidden: jax.Array, head: jax.Array, tokens: jax.Array,
                    answer_mask: jax.Array) -> jax.Array:
  """sum_t answer_mask[t] * log p(tokens[t] | tokens[:t]) per row, [B] float32.

  hidden [B, T, D] (position t predicts token t + 1), head [V, D]. The read-out
  runs over chunks of the sequence in a lax.scan whose body is rematerialised,
  so only one chunk's [B, c, V] logits exist at a time, forward or backward.
  """
  B, T, _ = hidden.shape
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  weights = jnp.pad(answer_mask[:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
  c = max([d for d in range(1, T + 1) if T % d == 0 and B * d <= CHUNK_TOKENS] + [1])

  @jax.checkpoint
  def chunk(head, h, t, w):  # [V, D], [B, c, D], [B, c], [B, c]
    logits = jnp.einsum("bcd,vd->bcv", h, head, preferred_element_type=jnp.float32)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    return (w * (picked - jax.nn.logsumexp(logits, axis=-1))).sum(axis=-1)  # [B]

  def body(total, xs):
    return total + chunk(head, *xs), None

  split = lambda x: jnp.moveaxis(x.reshape(B, T // c, c, *x.shape[2:]), 1, 0)  # noqa: E731
  total, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32),
                          (split(hidden), split(targets), split(weights)))
  return total


def pair_logprobs(graphdef: Any, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
  """[B, 2] summed answer log-probs of sides a and b, in one forward pass.

  The two sides are interleaved (row 2i = a_i, 2i + 1 = b_i) so that each device
  keeps its own pairs when the batch is sharded."""
  B, L = batch["tokens_a"].shape
  tokens = jnp.stack([batch["tokens_a"], batch["tokens_b"]], axis=1).reshape(2 * B, L)
  mask = jnp.stack([batch["mask_a"], batch["mask_b"]], axis=1).reshape(2 * B, L)
  model = nnx.merge(graphdef, params)
  positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (2 * B, L))
  hidden, _ = model.hidden(tokens, positions)
  return answer_logprobs(hidden, model.unembedding(), tokens, mask).reshape(B, 2)


def dpo_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: Any,
             tx: optax.GradientTransformation, loss_fn: LossFn,
             loss_cfg: Mapping) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch of pairs: pure (state, batch) -> (state, metrics)."""
  def loss_of(params):
    logp = pair_logprobs(graphdef, params, batch)
    outputs = {"policy_chosen": logp[:, 0], "policy_rejected": logp[:, 1],
               "ref_chosen": batch["ref_a"], "ref_rejected": batch["ref_b"]}
    out = loss_fn(outputs, batch, loss_cfg)
    return out.total, out.metrics

  return apply_gradients(state, loss_of, tx)


BATCH_KEYS = {"tokens_a": 2, "tokens_b": 2, "mask_a": 2, "mask_b": 2, "p": 1, "weight": 1,
              "ref_a": 1, "ref_b": 1}


def make_dpo_step(*, graphdef: Any, tx: optax.GradientTransformation, state_shardings: TrainState,
                  mesh: Mesh, loss: str | LossFn = "dpo", loss_cfg: Mapping | None = None):
  """dpo_step jitted with the state's shardings, the batch sharded along data, the state donated."""
  batch_sh = {k: sharding.batch_sharding(mesh, nd) for k, nd in BATCH_KEYS.items()}
  step = functools.partial(dpo_step, graphdef=graphdef, tx=tx,
                           loss_fn=get_loss(loss) if isinstance(loss, str) else loss,
                           loss_cfg=dict(loss_cfg or {}))
  return jax.jit(step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


_pair_logprobs_jit = jax.jit(pair_logprobs, static_argnums=0)


def score_pairs(graphdef: Any, params: Any, pairs: Sequence[EncodedPair], *, batch_size: int,
                pad_id: int, max_len: int, mesh: Mesh | None, desc: str = "") -> np.ndarray:
  """[n, 2] summed answer log-probs of every pair (host numpy); a progress bar when `desc`."""
  from tqdm import tqdm
  out = []
  with tqdm(total=len(pairs), unit="pair", desc=desc, disable=not desc) as bar:
    for lo in range(0, len(pairs), batch_size):
      chunk = pairs[lo:lo + batch_size]
      batch = pair_batch(chunk, batch_size, pad_id, max_len)
      batch = sharding.shard_global_batch(batch, mesh) if mesh is not None else batch
      out.append(sharding.to_host(_pair_logprobs_jit(graphdef, params, batch))[:len(chunk)])
      bar.update(len(chunk))
  return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def implicit_reward_metrics(logp: np.ndarray, ref: np.ndarray, p: np.ndarray, beta: float) -> dict:
  """Held-out numbers from [n, 2] policy and reference log-probs and labels p (first side's):
  reward_accuracy (pairs with p != 0.5 whose beta * h has the label's sign; ties wrong),
  reward_margin (mean beta * h seen from the preferred side), n."""
  h = (logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1])
  side = np.sign(np.asarray(p, np.float64) - 0.5)
  decided = side != 0
  seen = (beta * side * h)[decided]
  return dict(reward_accuracy=float((seen > 0).mean()) if seen.size else float("nan"),
              reward_margin=float(seen.mean()) if seen.size else float("nan"), n=int(len(h)))


# ----------------------------------------------------------------------------- a whole run


@dataclasses.dataclass(frozen=True)
class DPOSettings:
  """How to run DPO (the `dpo` stage fills it from config.dpo)."""

  optim: Mapping[str, Any]  # train.state.make_optimizer's fields
  loss: str = "dpo"
  beta: float = 0.1
  tau: float = 0.1  # ipo
  label_noise: float = 0.1  # robust_dpo
  max_len: int = 512
  batch_size: int = 8
  num_steps: int = 200
  eval_fraction: float = 0.1
  eval_every: int = 50
  checkpoint_every: int = 50
  keep: int = 3
  log_every: int = 10
  seed: int = 0

  def loss_cfg(self) -> dict[str, float]:
    return dict(beta=self.beta, tau=self.tau, label_noise=self.label_noise)


def _fingerprint(pairs: Sequence[EncodedPair], reference: str) -> str:
  digest = hashlib.sha1(reference.encode())
  for e in pairs:
    digest.update(f"{e.id}|{e.start_a}|{e.start_b}|".encode())
    digest.update(e.ids_a.tobytes() + b"|" + e.ids_b.tobytes())
  return digest.hexdigest()


def stored_reference_logprobs(path: pathlib.Path, pairs: Sequence[EncodedPair], reference: str,
                              compute: Callable[[], np.ndarray]) -> np.ndarray:
  """[n, 2] reference log-probs of `pairs`: read from `path` when it holds them, else computed
  once and written there (atomically). A file made for other pairs or another reference is an
  error: resuming against it would mix two runs."""
  fingerprint = _fingerprint(pairs, reference)
  if path.is_file():
    with np.load(path) as f:
      if str(f["fingerprint"]) != fingerprint:
        raise ValueError(f"{path}: reference log-probs of other pairs or another reference "
                         f"({str(f['reference'])!r}); delete it (and the checkpoints) to start over")
      log.info("dpo: reference log-probs of %d pairs read from %s", len(pairs), path)
      return np.asarray(f["logprobs"], np.float32)
  logprobs = np.asarray(compute(), np.float32)
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
      np.savez(f, logprobs=logprobs, fingerprint=fingerprint, reference=reference,
               ids=np.asarray([e.id for e in pairs]))
    os.replace(tmp, path)
  return logprobs


def train_dpo(policy, pairs: Sequence[prefs.Pair], s: DPOSettings, out_dir: str | pathlib.Path,
              mesh: Mesh, *, reference: Callable[[], Any] | None = None, reference_label: str = "",
              export_to: str | pathlib.Path | None = None) -> dict:
  """Trains `policy` (a LoadedModel; its params are donated) on preference pairs.

  `reference()` loads the frozen reference (a LoadedModel) when its log-probs are
  not stored yet; None = the starting policy. `reference_label` names it in the
  stored file. Checkpoints, metrics.jsonl, tb/ and reference_logprobs.npz go under
  out_dir; a rerun resumes. With `export_to` the trained policy is written there as
  HF safetensors. Returns the summary (train curve ends, held-out implicit rewards).
  """
  from cai_jax import weights
  from cai_jax.train.checkpoint import Checkpointer
  from cai_jax.train.loop import read_metrics, restore_or_keep, run_loop
  from cai_jax.train.state import init_train_state, make_optimizer

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tok, chat = policy.tokenizer, policy.chat
  train, held = prefs.split_heldout([oriented(p) for p in pairs], s.eval_fraction, s.seed)
  if not train:
    raise ValueError(f"dpo: no training pairs ({len(pairs)} read, {len(held)} held out)")
  log.info("dpo: %d training and %d held-out pairs, loss %s", len(train), len(held), s.loss)
  encoded = [encode_pair(p, tok, chat, s.max_len) for p in train + held]
  scoring = dict(batch_size=s.batch_size, pad_id=tok.pad_id, max_len=s.max_len, mesh=mesh)

  def reference_logprobs() -> np.ndarray:
    model = reference() if reference is not None else policy
    if model.cfg.vocab_size != policy.cfg.vocab_size:
      raise ValueError(f"dpo: the reference's vocabulary ({model.cfg.vocab_size}) is not the "
                       f"policy's ({policy.cfg.vocab_size})")
    return score_pairs(model.graphdef, model.params, encoded, desc="reference log-probs", **scoring)

  ref = stored_reference_logprobs(out_dir / REFERENCE_FILE, encoded,
                                  reference_label or policy.source, reference_logprobs)
  enc_train, enc_held = encoded[:len(train)], encoded[len(train):]
  ref_train, ref_held = ref[:len(train)], ref[len(train):]

  tx = make_optimizer(s.optim, s.num_steps)
  p_shard = jax.tree.map(lambda x: x.sharding, policy.params)
  state, s_shard = init_train_state(policy.params, p_shard, tx, jax.random.key(s.seed), mesh,
                                    donate=True)
  ckpt = Checkpointer(out_dir / "checkpoints", keep=s.keep)
  state, _ = restore_or_keep(ckpt, state, s_shard)
  step_fn = make_dpo_step(graphdef=policy.graphdef, tx=tx, state_shardings=s_shard, mesh=mesh,
                          loss=s.loss, loss_cfg=s.loss_cfg())

  def batches(step: int):
    while True:
      rows = batch_indices(len(enc_train), s.batch_size, s.seed, step)
      batch = pair_batch([enc_train[i] for i in rows], s.batch_size, tok.pad_id, s.max_len,
                         ref_train[rows])
      yield sharding.shard_global_batch(batch, mesh)  # every host draws the same global rows
      step += 1

  p_held = np.asarray([e.p for e in enc_held])

  def eval_fn(st: TrainState) -> dict:
    logp = score_pairs(policy.graphdef, st.params, enc_held, **scoring)
    return implicit_reward_metrics(logp, ref_held, p_held, s.beta)

  state = run_loop(state=state, step_fn=step_fn, batches=batches(int(state.step)), num_steps=s.num_steps,
                   workdir=out_dir, checkpointer=ckpt, eval_fn=eval_fn if held else None,
                   eval_every=s.eval_every, save_every=s.checkpoint_every, log_every=s.log_every,
                   stage="dpo", tokens_in_batch=lambda b: int(2 * b["tokens_a"].size))
  ckpt.close()
  if export_to is not None:
    weights.export_hf_from_devices(export_to, policy.cfg, state.params, tok)
    log.info("dpo: exported the policy as HF safetensors to %s", export_to)
  curve = read_metrics(out_dir / "metrics.jsonl", "dpo")
  ends = {f"{when}_{k}": rec.get(k) for when, rec in (("first", curve[0] if curve else {}),
                                                        ("last", curve[-1] if curve else {}))
          for k in ("loss", "reward_accuracy", "reward_margin")}
  return dict(steps=int(state.step), loss=s.loss, n_train=len(train), n_heldout=len(held), **ends,
              eval=eval_fn(state) if held else None, reference_logprobs=str(out_dir / REFERENCE_FILE),
              export_hf=str(export_to) if export_to is not None else None)
