"""Multiple-choice evaluation by log-likelihood (stage `eval-mc`).

Data: JSONL, one item per line, {"prompt": str, "corrects": [str, ...],
"incorrects": [str, ...]} (the form of the CAI paper's evaluation files; any
number of options, extra fields ignored). Each option is scored by the summed
log-probability of its tokens given the prompt (prompt and option tokenized
separately and concatenated). An item counts as right when its best correct
option scores strictly higher than every incorrect one (ties are wrong).
Accuracy comes with a 95% Wilson score interval. A LogprobFn is any
(prompts, continuations) -> summed log p; `sampling.TextSampler.logprobs` is the model's.

  python -m cai_jax eval-mc --config experiments/embedded.py --data ../shared/data/cai_paper/evals/438HHHEvaluations.jsonl
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from cai_jax.data.jsonl import iter_jsonl

log = logging.getLogger(__name__)

# (prompts, continuations) -> summed log p(continuation | prompt), one float per pair.
LogprobFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


class EvalDataError(ValueError):
  """A malformed evaluation file; the message names file:line:field."""


@dataclasses.dataclass(frozen=True)
class MCItem:
  """One multiple-choice question."""

  prompt: str
  corrects: tuple[str, ...]
  incorrects: tuple[str, ...]
  where: str = ""  # "file:line" it came from
  extra: tuple[tuple[str, str], ...] = ()  # other string fields, e.g. text_correct (HHH)

  def get(self, key: str) -> str | None:
    return dict(self.extra).get(key)


@dataclasses.dataclass(frozen=True)
class MCResult:
  """Accuracy over a set of items, with a 95% Wilson interval and per-item scores."""

  n: int
  n_correct: int
  accuracy: float
  ci_low: float
  ci_high: float
  correct: np.ndarray  # [n] bool
  best_correct: np.ndarray  # [n] max log p over the correct options
  best_incorrect: np.ndarray  # [n] max log p over the incorrect options

  def summary(self) -> dict:
    return dict(n=self.n, n_correct=self.n_correct, accuracy=self.accuracy,
                ci95=[self.ci_low, self.ci_high])


def _string_list(where: str, record: dict, field: str) -> tuple[str, ...]:
  value = record.get(field)
  if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
    raise EvalDataError(f"{where}:{field}: expected a non-empty list of strings, got {value!r:.80}")
  return tuple(value)


def load_mc_jsonl(path, extra_fields: Sequence[str] = ()) -> list[MCItem]:
  """Reads and checks a multiple-choice JSONL; `extra_fields` are required string fields kept too."""
  items = []
  for where, record in iter_jsonl(path, EvalDataError):
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt:
      raise EvalDataError(f"{where}:prompt: expected a non-empty string, got {prompt!r:.80}")
    corrects = _string_list(where, record, "corrects")
    incorrects = _string_list(where, record, "incorrects")
    extra = []
    for field in extra_fields:
      value = record.get(field)
      if not isinstance(value, str) or not value:
        raise EvalDataError(f"{where}:{field}: expected a non-empty string, got {value!r:.80}")
      extra.append((field, value))
    items.append(MCItem(prompt, corrects, incorrects, where, tuple(extra)))
  if not items:
    raise EvalDataError(f"{path}: no items")
  return items


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion k/n (z = 1.96: 95%)."""
  if n <= 0:
    return 0.0, 1.0
  p = k / n
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, center - half), min(1.0, center + half)


def accuracy_result(correct: np.ndarray, best_correct=None, best_incorrect=None) -> MCResult:
  """An MCResult from a boolean vector of per-item outcomes."""
  correct = np.asarray(correct, bool)
  n, k = int(correct.size), int(correct.sum())
  lo, hi = wilson_interval(k, n)
  empty = np.full(n, np.nan, np.float32)
  return MCResult(n, k, k / max(n, 1), lo, hi, correct,
                  empty if best_correct is None else np.asarray(best_correct, np.float32),
                  empty if best_incorrect is None else np.asarray(best_incorrect, np.float32))


def score_items(items: Sequence[MCItem], logprob_fn: LogprobFn,
                prompts: Sequence[str] | None = None) -> MCResult:
  """Scores every option of every item in one call of `logprob_fn`.

  `prompts` optionally replaces each item's prompt (e.g. prompt + reasoning).
  """
  prompts = [it.prompt for it in items] if prompts is None else list(prompts)
  pairs_p, pairs_c, owner = [], [], []
  for i, (it, p) in enumerate(zip(items, prompts)):
    for opt in it.corrects + it.incorrects:
      pairs_p.append(p)
      pairs_c.append(opt)
      owner.append(i)
  scores = np.asarray(logprob_fn(pairs_p, pairs_c), np.float64)
  if scores.shape != (len(pairs_p),):
    raise ValueError(f"logprob_fn returned shape {scores.shape}, expected ({len(pairs_p)},)")
  best_c = np.full(len(items), -np.inf)
  best_i = np.full(len(items), -np.inf)
  j = 0
  for i, it in enumerate(items):
    nc, ni = len(it.corrects), len(it.incorrects)
    best_c[i] = scores[j:j + nc].max()
    best_i[i] = scores[j + nc:j + nc + ni].max()
    j += nc + ni
  return accuracy_result(best_c > best_i, best_c, best_i)
