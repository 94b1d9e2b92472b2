"""A linear activation probe: logistic regression on a model's mean hidden states.

Activation probes are cheap classifiers read off the model's own representations
(Anthropic's constitutional classifiers use them as a first stage). Here the
probe tells harmful from benign prompts; if fine-tuning moves the policy's
representation of harmful prompts towards the benign ones, the probe's mean
score on harmful prompts falls, with no generation and no judge:

    features = mean_hidden_states(graphdef, params, prompt_ids, pad_id)   # [N, D]
    probe = fit_logistic(features, labels, l2=0.1)                        # once, at the start
    probe.scores(mean_hidden_states(graphdef, new_params, harmful_ids, pad_id)).mean()

Features are the final-norm hidden states averaged over each prompt's tokens
(the chat-formatted user turn and the assistant header). The fit is Newton's
method on standardised features in float64 NumPy: deterministic and exact.
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
from cai_jax.data.jsonl import iter_jsonl
from cai_jax.sampling import engine

LABELS = ("benign", "harmful")  # label index 0, 1: the probe scores P(harmful)


@dataclasses.dataclass(frozen=True, eq=False)
class LinearProbe:
  """score(x) = sigmoid(((x - mean) / scale) . weights + bias)."""

  mean: np.ndarray  # [D]
  scale: np.ndarray  # [D]
  weights: np.ndarray  # [D]
  bias: float

  def logits(self, features: np.ndarray) -> np.ndarray:
    """[N] float64 logits of P(harmful) for features [N, D]."""
    z = (np.asarray(features, np.float64) - self.mean) / self.scale
    return z @ self.weights + self.bias

  def scores(self, features: np.ndarray) -> np.ndarray:
    """[N] P(harmful) in (0, 1)."""
    return 1.0 / (1.0 + np.exp(-self.logits(features)))


def fit_logistic(features: np.ndarray, labels: Sequence[int], *, l2: float = 0.1,
                 iterations: int = 25) -> LinearProbe:
  """Logistic regression minimising mean log-loss + l2/2 * |weights|^2 (bias unpenalised) on
  features standardised per dimension, by Newton's method from zero.

  labels: 1 = harmful, 0 = benign; both must occur. l2 > 0 keeps the fit finite when the
  classes are separable (they usually are: D is larger than N).
  """
  x = np.asarray(features, np.float64)
  y = np.asarray(labels, np.float64)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"fit_logistic: features {x.shape} and {len(y)} labels do not match")
  if set(np.unique(y).tolist()) != {0.0, 1.0}:
    raise ValueError("fit_logistic: expected labels 0 and 1, both present")
  if l2 <= 0:
    raise ValueError(f"fit_logistic: l2 must be > 0, got {l2}")
  mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
  z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)  # [N, D + 1]
  n, d = z.shape
  penalty = np.full(d, l2)
  penalty[-1] = 0.0  # the bias
  theta = np.zeros(d)
  for _ in range(iterations):
    p = 1.0 / (1.0 + np.exp(-(z @ theta)))
    grad = z.T @ (p - y) / n + penalty * theta
    hessian = (z.T * (p * (1 - p))) @ z / n + np.diag(penalty) + 1e-9 * np.eye(d)
    step = np.linalg.solve(hessian, grad)
    theta -= step
    if np.max(np.abs(step)) < 1e-10:
      break
  return LinearProbe(mean=mean, scale=scale, weights=theta[:-1], bias=float(theta[-1]))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _mean_hidden(graphdef, params, tokens, positions, mask):
  """Masked mean over positions of the final-norm hidden states: [B, D] float32."""
  hidden, _ = nnx.merge(graphdef, params).hidden(tokens, positions)
  weights = mask.astype(jnp.float32)[..., None]
  return (hidden.astype(jnp.float32) * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def mean_hidden_states(graphdef: Any, params: Any, prompt_ids: Sequence[Sequence[int]], pad_id: int,
                       *, mesh: Mesh | None = None) -> np.ndarray:
  """[N, D] float64: each prompt's final-norm hidden states averaged over its tokens.

  One forward over all prompts: rows padded to a power of two (a multiple of the mesh's data
  shards) and to a length bucket, so repeated calls on one prompt set compile once.
  """
  if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
    raise ValueError("mean_hidden_states: expected non-empty prompts")
  n = len(prompt_ids)
  shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp")
                                                if a in mesh.shape]))
  rows = -(-engine.next_pow2(n) // shards) * shards
  width = engine.length_bucket(max(len(p) for p in prompt_ids))
  tokens = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), np.int32)
  for i, p in enumerate(prompt_ids):
    tokens[i, :len(p)], mask[i, :len(p)] = p, 1
  batch = {"tokens": tokens, "mask": mask,
           "positions": np.broadcast_to(np.arange(width, dtype=np.int32), (rows, width)).copy()}
  if mesh is not None:
    batch = sharding.shard_batch(batch, mesh, "sample")
  out = _mean_hidden(graphdef, params, batch["tokens"], batch["positions"], batch["mask"])
  return np.asarray(jax.device_get(out), np.float64)[:n]


@dataclasses.dataclass(frozen=True)
class LabelledPrompt:
  id: str
  text: str
  label: int  # 1 = harmful, 0 = benign


def load_labelled_prompts(path: str | pathlib.Path) -> list[LabelledPrompt]:
  """{"id"?, "prompt", "label": "harmful" | "benign"} per line; a bad line names file:line."""
  out = []
  for where, rec in iter_jsonl(path):
    text, label = rec.get("prompt"), rec.get("label")
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"{where}: field 'prompt': expected a non-empty string")
    if label not in LABELS:
      raise ValueError(f"{where}: field 'label': {label!r}; expected one of {list(LABELS)}")
    out.append(LabelledPrompt(str(rec.get("id", f"line-{where.line}")), text.strip(),
                              LABELS.index(label)))
  if len({p.label for p in out}) < 2:
    raise ValueError(f"{path}: the probe needs both harmful and benign prompts")
  return out
