"""Stage `eval-refusal`: how well a refusal classifier (evals/refusal.py) agrees with human
labels of (prompt, completion) pairs: full_compliance / full_refusal / partial_refusal.

  python -m cai_jax eval-refusal --config experiments/tiny.py
  python -m cai_jax eval-refusal --config experiments/embedded.py --config.refusal.backend=judge
  python -m cai_jax eval-refusal --config experiments/tiny.py --config.refusal.data=FILE.jsonl

refusal.data: JSONL {"prompt", "completion", "label", "case"?}; "" = our labelled set
(cai_jax/resources/evals/refusal_labelled.jsonl). (`--data` is eval-mc's shorthand, not ours.)
refusal.backend: rules (no model) | judge (config.model reads a multiple-choice question and
the class letter with the highest log-prob wins; eval.batch_size and eval.max_prompt_len apply).
Prints per-class precision/recall, the confusion matrix and the agreement with its 95% Wilson
interval; writes <workdir>/eval/refusal_<backend>.json (the summary plus the disagreements).
"""

from __future__ import annotations

import json

from cai_jax.evals import refusal
from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def judge_sampler(config) -> TextSampler:
  """config.model as the judge, built as eval-hhh builds its sampler."""
  mesh = common.eval_mesh(config)
  loaded = common.load(config, mesh, rules="sample")
  common.say_start_model("eval-refusal (judge)", loaded.source, "config.model")
  return TextSampler(loaded, common.judge_settings(config), mesh=mesh, seed=config.seed)


def _fmt(x) -> str:
  return "   -" if x is None else f"{x:.2f}"


def report_text(report: dict) -> str:
  """Per-class precision/recall, the confusion matrix (rows: label, columns: prediction) and
  the agreement, as a small text table."""
  width = max(len(c) for c in refusal.CLASSES)
  lines = [f"{'class':<{width}}  precision  recall  support"]
  for c, m in report["per_class"].items():
    lines.append(f"{c:<{width}}  {_fmt(m['precision']):>9}  {_fmt(m['recall']):>6}  "
                 f"{m['support']:>7}")
  short = {c: c.replace("full_", "").replace("partial_", "partial ") for c in refusal.CLASSES}
  corner = "label \\ predicted"
  lines += ["", f"{corner:<{width}}  " + "  ".join(f"{short[c]:>14}" for c in refusal.CLASSES)]
  for t, row in report["confusion"].items():
    lines.append(f"{t:<{width}}  " + "  ".join(f"{row[p]:>14}" for p in refusal.CLASSES))
  lo, hi = report["ci95"]
  lines += ["", f"agreement {report['agreement']:.3f} ({report['n_agree']}/{report['n']}), "
            f"95% CI [{lo:.3f}, {hi:.3f}]"]
  return "\n".join(lines)


def run(config) -> dict:
  r = config.refusal
  data = common.repo_path(r.data) if r.data else str(refusal.builtin_labelled_path())
  items = refusal.load_labelled(data)
  judge = judge_sampler(config) if r.backend == "judge" else None
  predictions = refusal.classify([it.prompt for it in items], [it.completion for it in items],
                                 backend=r.backend, judge=judge)
  report = refusal.agreement_report([it.label for it in items], predictions)
  print(f"refusal classifier ({r.backend}) on {data}\n{report_text(report)}", flush=True)
  summary = dict(n=report["n"], agreement=report["agreement"], ci95=report["ci95"],
                 confusion=report["confusion"], per_class=report["per_class"],
                 backend=r.backend, data=data)
  disagreements = [dict(where=it.where, case=it.case, label=it.label, predicted=p)
                   for it, p in zip(items, predictions) if p != it.label]
  out = common.layout(config).stage_dir("eval-refusal") / f"refusal_{r.backend}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(summary, stage="eval-refusal", n_agree=report["n_agree"],
                                 disagreements=disagreements), indent=1, ensure_ascii=False))
  return common.finish("eval-refusal", summary)
