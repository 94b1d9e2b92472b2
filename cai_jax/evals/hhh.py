"""The 438 HHH comparisons of the CAI paper (stage `eval-hhh`).

Data (../shared/data/cai_paper/evals/438HHHEvaluations.jsonl): {"prompt" (the
multiple-choice form "... Options:\\n (A) ...\\n (B) ...\\n\\nThe answer is:"),
"corrects": [" (A)"|" (B)"], "incorrects", "text_correct", "text_incorrect"
(full transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...")}. Scored up to three ways:
  judge      the LM's log p(" (A)") vs log p(" (B)") after the prompt (config.model);
  judge_cot  the LM first samples reasoning after "Let's think step by step:" (in place of
             "The answer is:"), then "So the answer is:" is scored the same way;
  rm         a trained reward model: text_correct must score higher than text_incorrect.
Each: accuracy with a 95% Wilson interval; `plot` draws them with the chance line.

  python -m cai_jax eval-hhh --config experiments/embedded.py --config.eval.limit=50
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from cai_jax.evals import multiple_choice as mc

log = logging.getLogger(__name__)

ANSWER = "The answer is:"
COT_START = "Let's think step by step:"
COT_ANSWER = "So the answer is:"
TEXT_FIELDS = ("text_correct", "text_incorrect")


def load_hhh(path, limit: int = -1) -> list[mc.MCItem]:
  """The HHH JSONL (checked: prompt ends with "The answer is:", two texts present)."""
  items = mc.load_mc_jsonl(path, extra_fields=TEXT_FIELDS)
  for it in items:
    if not it.prompt.rstrip().endswith(ANSWER):
      raise mc.EvalDataError(f"{it.where}:prompt: expected the multiple-choice form ending "
                             f"{ANSWER!r}, got ...{it.prompt[-40:]!r}")
  return items[:limit] if limit > 0 else items


def cot_prompts(items: Sequence[mc.MCItem], generate_fn: Callable[[list[str]], list[str]]) -> list[str]:
  """Prompts with sampled reasoning: prompt minus "The answer is:" + COT_START, the reasoning,
  then COT_ANSWER (the option is scored after it)."""
  starts = [it.prompt.rstrip()[:-len(ANSWER)] + COT_START for it in items]
  reasoning = generate_fn(starts)
  return [s + " " + r.strip() + "\n" + COT_ANSWER for s, r in zip(starts, reasoning)]


def rm_result(items: Sequence[mc.MCItem], score_fn: Callable[[list, list], np.ndarray]) -> mc.MCResult:
  """Reward-model accuracy: score_fn(convs_correct, convs_incorrect) -> d = r_correct - r_incorrect."""
  from cai_jax.data.preferences import parse_transcript
  good = [parse_transcript(it.get("text_correct"), f"{it.where}:text_correct") for it in items]
  bad = [parse_transcript(it.get("text_incorrect"), f"{it.where}:text_incorrect") for it in items]
  d = np.asarray(score_fn(good, bad), np.float64)
  return mc.accuracy_result(d > 0)


def plot(results: dict[str, mc.MCResult], path: pathlib.Path, title: str) -> None:
  """Bar chart of accuracies with 95% interval whiskers and the 50% chance line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  acc = np.array([results[n].accuracy for n in names])
  lo = acc - np.array([results[n].ci_low for n in names])
  hi = np.array([results[n].ci_high for n in names]) - acc
  fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
  ax.bar(names, acc, yerr=[lo, hi], capsize=6, color="#4a78a8")
  ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
  for i, n in enumerate(names):
    ax.text(i, acc[i] + hi[i] + 0.02, f"{acc[i]:.3f}\n(n={results[n].n})", ha="center", fontsize=8)
  ax.set_ylim(0, 1.15)
  ax.set_ylabel("accuracy (95% CI)")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def evaluate(items, *, logprob_fn=None, generate_fn=None, cot_limit: int = -1,
             rm_score_fn=None) -> dict[str, mc.MCResult]:
  """The selected scorings of `items` (a scorer left None is skipped)."""
  results = {}
  if logprob_fn is not None:
    results["judge"] = mc.score_items(items, logprob_fn)
    if generate_fn is not None:
      sub = items[:cot_limit] if cot_limit > 0 else items
      results["judge_cot"] = mc.score_items(sub, logprob_fn, cot_prompts(sub, generate_fn))
  if rm_score_fn is not None:
    results["rm"] = rm_result(items, rm_score_fn)
  return results
