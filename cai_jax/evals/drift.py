"""First-token drift: how far a model has moved from a reference where refusals begin.

Qi et al. 2024 ("shallow safety alignment") found that the KL between an aligned
model and its base on harmful prompts sits mostly in the first few response
tokens. So KL(current || reference) of the full next-token distributions at the
first k positions of the reference's own answers is a cheap drift signal that
needs no generation and no judge:

    probe = reference_answers(reference_sampler, prompts, k=5, refusal_opening="I'm sorry, ...")
    stats = first_token_kl(graphdef, params, ref_params, probe)   # every N training steps
    stats["kl_by_position"]  # [k]

`reference_answers` runs once (greedy generation); `first_token_kl` is one
jitted forward of each model over the fixed probe, so it compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cai_jax import sharding
from cai_jax.sampling import TextSampler, engine


@dataclasses.dataclass(frozen=True, eq=False)
class DriftProbe:
  """The reference's first k answer tokens to N chat-formatted prompts, as padded arrays.

  Row i of `tokens` is prompt i (prompt_len[i] ids) followed by its answer_len[i] <= k
  greedy answer ids (stop token included when it came within k), then pad_id. Row i of
  `refusal_tokens` is the same prompt followed by the refusal opening's refusal_len ids.
  Both arrays have the same bucketed width T, so the two kinds of rows share one forward.
  """

  tokens: np.ndarray  # [N, T] int32
  positions: np.ndarray  # [N, T] int32: 0..T-1 in every row
  prompt_len: np.ndarray  # [N] int32
  answer_len: np.ndarray  # [N] int32, <= k
  refusal_tokens: np.ndarray  # [N, T] int32
  refusal_len: int  # tokens in the refusal opening
  k: int
  pad_id: int

  @property
  def n(self) -> int:
    return int(self.tokens.shape[0])

  def answer_mask(self) -> np.ndarray:
    """[N, k] bool: position j of row i is part of the reference's answer."""
    return np.arange(self.k)[None, :] < self.answer_len[:, None]


def reference_answers(sampler: TextSampler, prompts: Sequence[str], k: int,
                      refusal_opening: str) -> DriftProbe:
  """The probe: the sampler's model's greedy first k answer tokens to each prompt (as a user
  turn in its chat template), and the prompt followed by `refusal_opening`.

  Always greedy, whatever `sampler.settings.temperature` says (the probe must not depend on
  a seed); batch size, prompt-length limit and mesh come from the sampler.
  """
  if k < 1:
    raise ValueError(f"reference_answers: k must be >= 1, got {k}")
  if not prompts:
    raise ValueError("reference_answers: no prompts")
  model, settings = sampler.model, sampler.settings
  tok = model.tokenizer
  refusal = list(tok.encode(refusal_opening))
  if not refusal:
    raise ValueError("reference_answers: the refusal opening encodes to no tokens")
  limit = settings.max_prompt_len
  prompt_ids = [sampler.encode_chat([{"role": "user", "content": p}])[-limit:] for p in prompts]
  out = engine.generate(model.graphdef, model.params, prompt_ids, rng=sampler.key,
                        max_new_tokens=k, temperature=0.0, stop_ids=tok.stop_ids,
                        pad_id=tok.pad_id, mesh=sampler.mesh, max_prompt_len=limit,
                        batch_size=settings.batch_size)
  answers = [out.row(i)[:k] for i in range(len(prompts))]
  return build_probe(prompt_ids, answers, refusal, k, tok.pad_id)


def build_probe(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
                refusal_ids: Sequence[int], k: int, pad_id: int) -> DriftProbe:
  """Pads prompts + answers (each cut to k tokens) and prompts + refusal into one probe."""
  if len(prompt_ids) != len(answer_ids):
    raise ValueError(f"build_probe: {len(prompt_ids)} prompts but {len(answer_ids)} answers")
  if not prompt_ids:
    raise ValueError("build_probe: no prompts")
  if any(not p for p in prompt_ids) or not refusal_ids:
    raise ValueError("build_probe: every prompt and the refusal opening need at least one token")
  prompt_ids = [list(map(int, p)) for p in prompt_ids]
  answers = [list(map(int, a))[:k] for a in answer_ids]
  refusal = list(map(int, refusal_ids))
  n = len(prompt_ids)
  width = engine.length_bucket(max(len(p) + max(k, len(refusal)) for p in prompt_ids))
  tokens = np.full((n, width), pad_id, np.int32)
  refusal_tokens = np.full((n, width), pad_id, np.int32)
  for i, (p, a) in enumerate(zip(prompt_ids, answers)):
    tokens[i, :len(p) + len(a)] = p + a
    refusal_tokens[i, :len(p) + len(refusal)] = p + refusal
  positions = np.broadcast_to(np.arange(width, dtype=np.int32), (n, width)).copy()
  return DriftProbe(tokens=tokens, positions=positions,
                    prompt_len=np.asarray([len(p) for p in prompt_ids], np.int32),
                    answer_len=np.asarray([len(a) for a in answers], np.int32),
                    refusal_tokens=refusal_tokens, refusal_len=len(refusal), k=k,
                    pad_id=int(pad_id))


# ----------------------------------------------------------------------------- the jitted core


def _gather_logits(model, hidden, index):
  """Logits [B, J, V] (float32) at hidden positions index [B, J]; only those J are projected,
  so the vocabulary-sized tensor is never [B, T, V]."""
  picked = jnp.take_along_axis(hidden, index[..., None], axis=1)  # [B, J, D]
  return model.logits(picked).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _drift_core(graphdef, params, ref_params, tokens, positions, answer_index, refusal_index,
                refusal_targets):
  """tokens/positions [2B, T]: B answer rows then B refusal rows; answer_index [B, k] and
  refusal_index/refusal_targets [B, R] point into the first and second half.

  Returns per-row KL(current || reference) [B, k] at the answer positions and the summed
  log p(refusal opening | prompt) [B] under each model.
  """
  B = answer_index.shape[0]

  def one_model(p):
    model = nnx.merge(graphdef, p)
    hidden, _ = model.hidden(tokens, positions)  # [2B, T, D]
    answer_logp = jax.nn.log_softmax(_gather_logits(model, hidden[:B], answer_index))  # [B, k, V]
    refusal_logp = jax.nn.log_softmax(_gather_logits(model, hidden[B:], refusal_index))
    picked = jnp.take_along_axis(refusal_logp, refusal_targets[..., None], axis=-1)[..., 0]
    return answer_logp, jnp.sum(picked, axis=-1)  # [B, k, V], [B]

  logp, refusal = one_model(params)
  ref_logp, ref_refusal = one_model(ref_params)
  kl = jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)  # [B, k]
  return kl, refusal, ref_refusal


def _core_inputs(probe: DriftProbe, rows: int) -> dict[str, np.ndarray]:
  """The probe as the core's arrays, with `rows` rows per half (pad rows are all pad_id and
  point at position 0; their results are dropped on the host)."""
  n, width = probe.tokens.shape
  pad = ((0, rows - n), (0, 0))
  answer_tokens = np.pad(probe.tokens, pad, constant_values=probe.pad_id)
  refusal_tokens = np.pad(probe.refusal_tokens, pad, constant_values=probe.pad_id)
  # The distribution over answer token j (or refusal token j) sits at prompt_len - 1 + j.
  start = np.pad(probe.prompt_len, (0, rows - n), constant_values=1)[:, None] - 1
  answer_index = np.minimum(start + np.arange(probe.k)[None], width - 1)
  refusal_index = start + np.arange(probe.refusal_len)[None]
  refusal_targets = np.take_along_axis(refusal_tokens, refusal_index + 1, axis=1)
  tokens = np.concatenate([answer_tokens, refusal_tokens])
  positions = np.pad(probe.positions, pad, mode="edge")  # both halves share the positions
  return dict(tokens=tokens, positions=np.concatenate([positions, positions]),
              answer_index=answer_index.astype(np.int32),
              refusal_index=refusal_index.astype(np.int32),
              refusal_targets=refusal_targets.astype(np.int32))


def _data_shards(mesh: Mesh | None) -> int:
  """Devices a batch's rows are split over (the data and fsdp axes)."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


def first_token_kl(graphdef, params: Any, ref_params: Any, probe: DriftProbe, *,
                   mesh: Mesh | None = None) -> dict:
  """KL(current || reference) of the next-token distributions at the probe's k answer
  positions, and the refusal opening's log-probability under both models.

  `params` (current) and `ref_params` (reference) are pure dicts for the one `graphdef`.
  Returns {"kl_by_position": [k] float64 (mean over the prompts whose answer reaches that
  position; 0 where none does), "kl_mean": mean of kl_by_position over the positions some
  answer reaches, "refusal_logprob" / "refusal_logprob_ref": mean over prompts of the summed
  log p(refusal opening | prompt)}. The row count is bucketed to a power of two (and to the
  mesh's data shards), so repeated calls on one probe compile once.
  """
  shards = _data_shards(mesh)
  rows = -(-engine.next_pow2(probe.n) // shards) * shards
  batch = _core_inputs(probe, rows)
  if mesh is not None:
    batch = sharding.shard_batch(batch, mesh, "sample")
  kl, refusal, ref_refusal = _drift_core(
      graphdef, params, ref_params, batch["tokens"], batch["positions"], batch["answer_index"],
      batch["refusal_index"], batch["refusal_targets"])
  n = probe.n
  kl = np.asarray(kl, np.float64)[:n]
  mask = probe.answer_mask()
  counts = mask.sum(axis=0)
  by_position = np.where(counts > 0, (kl * mask).sum(axis=0) / np.maximum(counts, 1), 0.0)
  reached = counts > 0
  return {"kl_by_position": by_position,
          "kl_mean": float(by_position[reached].mean()) if reached.any() else 0.0,
          "refusal_logprob": float(np.asarray(refusal, np.float64)[:n].mean()),
          "refusal_logprob_ref": float(np.asarray(ref_refusal, np.float64)[:n].mean())}


def plot_kl_by_position(profiles: dict[str, np.ndarray], path: str | pathlib.Path,
                        title: str = "KL(current || reference) by response position") -> None:
  """Grouped bars of KL per response position, one colour per profile (e.g. per checkpoint)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(profiles)
  k = max((len(np.asarray(profiles[n])) for n in names), default=0)
  width = 0.8 / max(len(names), 1)
  fig, ax = plt.subplots(figsize=(2.4 + 0.6 * k * max(1, len(names) ** 0.5), 3.6))
  for j, name in enumerate(names):
    values = np.asarray(profiles[name], np.float64)
    x = np.arange(len(values)) + (j - (len(names) - 1) / 2) * width
    ax.bar(x, values, width=width, label=name)
  ax.set_xticks(np.arange(k), [str(i + 1) for i in range(k)])
  ax.set_xlabel("response token position")
  ax.set_ylim(bottom=0)  # KL is never negative; an all-zero profile still gets a sane axis
  ax.set_ylabel("KL (nats)")
  ax.set_title(title, fontsize=9)
  if names:
    ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
