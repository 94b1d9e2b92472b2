"""SL-CAI data quality per revision round (the paper's revisions figure in miniature).

For the records of `sl_cai.jsonl`, round 0 is the initial answer and round r
the r-th revision. Per round and per prompt kind (red_team, helpful) this
reports the refusal classes of the answers (evals/refusal.py) and, when an
evaluator reward model is given, their mean harmlessness score:

  round  n   full_compliance  full_refusal  partial_refusal  refusal_rate [95% CI]  harmless [95% CI]

refusal_rate = (full + partial refusals) / n with a Wilson interval; the
harmlessness interval is mean +- 1.96 sd / sqrt(n). No training is needed, so
the table shows whether critique -> revision moves the answers at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cai_jax.evals.multiple_choice import wilson_interval

CLASSES = ("full_compliance", "full_refusal", "partial_refusal")
REFUSALS = ("full_refusal", "partial_refusal")
# (prompts, answers) -> one class of CLASSES each / one harmlessness score each.
ClassifyFn = Callable[[Sequence[str], Sequence[str]], Sequence[str]]
ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def answers_by_round(records: Sequence[Mapping], kind: str) -> list[list[tuple[str, str]]]:
  """[round][i] -> (prompt, answer) for the records of one kind; round 0 = initial answers.
  A round holds only the records that reached it."""
  chosen = [r for r in records if r.get("kind") == kind]
  n_rounds = max((len(r.get("rounds") or []) for r in chosen), default=0)
  out = [[(r["prompt"], r["initial"]) for r in chosen]]
  for k in range(n_rounds):
    out.append([(r["prompt"], r["rounds"][k]["revision"]) for r in chosen
                if len(r.get("rounds") or []) > k])
  return out


def mean_interval(x: Sequence[float]) -> tuple[float, list[float]]:
  """(mean, [lo, hi]) with the normal 95% interval mean +- 1.96 sd / sqrt(n)."""
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return float("nan"), [float("nan"), float("nan")]
  half = 1.959964 * float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else float("nan")
  return float(x.mean()), [float(x.mean()) - half, float(x.mean()) + half]


def round_row(round_index: int, pairs: Sequence[tuple[str, str]], classify_fn: ClassifyFn,
              score_fn: ScoreFn | None = None) -> dict:
  """One row of the table for the answers of one round."""
  prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
  classes = list(classify_fn(prompts, answers)) if pairs else []
  n = len(classes)
  row: dict = {"round": round_index, "n": n}
  for c in CLASSES:
    row[c] = sum(x == c for x in classes) / n if n else float("nan")
  k = sum(x in REFUSALS for x in classes)
  row["refusal_rate"] = k / n if n else float("nan")
  row["refusal_ci95"] = list(wilson_interval(k, n))
  if score_fn is not None:
    row["harmless"], row["harmless_ci95"] = mean_interval(score_fn(prompts, answers) if pairs else [])
  return row


def round_table(records: Sequence[Mapping], classify_fn: ClassifyFn,
                score_fn: ScoreFn | None = None) -> dict[str, list[dict]]:
  """{"red_team": [row per round], "helpful": [row for the initial answers]} (kinds present)."""
  table = {}
  for kind in ("red_team", "helpful"):
    rounds = answers_by_round(records, kind)
    if rounds[0]:
      table[kind] = [round_row(i, pairs, classify_fn, score_fn) for i, pairs in enumerate(rounds)]
  return table
