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
On several hosts the judge's items are split over them and host 0 reports.
"""

from __future__ import annotations

import json

from cai_jax.data.jsonl import ResumableRecords
from cai_jax.evals import refusal
from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def judge_sampler(config) -> TextSampler:
  """config.model as the judge, built as eval-hhh builds its sampler."""
  mesh = common.generation_mesh(config)  # eval_mesh on one host; this host's devices on several
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


def classify_on_hosts(config, items: list) -> list[str] | None:
  """The classifier's class for every item. With the judge on several hosts, each host
  judges its share (item i on host i % count) into a shard beside the report and host 0
  gets all classes once every host is done (the others: None). The rules need no model:
  host 0 classifies alone."""
  r, host = config.refusal, common.host()
  if host.index != 0 and r.backend != "judge":
    return None
  if host.count == 1 or r.backend != "judge":
    judge = judge_sampler(config) if r.backend == "judge" else None
    return refusal.classify([it.prompt for it in items], [it.completion for it in items],
                            backend=r.backend, judge=judge)
  out = common.layout(config).stage_dir("eval-refusal") / f".refusal_{r.backend}.partial.jsonl"
  settings = dict(model=config.model.to_dict(), eval=config.eval.to_dict(),
                  items=common.data_hash(items))
  shards = ResumableRecords(out, settings, f"the refusal judge's classes in {out}", host)
  ids = [f"{i:06d}" for i in range(len(items))]
  mine = [i for i in host.share(range(len(items))) if ids[i] not in shards.done]
  if mine:
    got = refusal.classify([items[i].prompt for i in mine], [items[i].completion for i in mine],
                           backend="judge", judge=judge_sampler(config))
    shards.add([dict(id=ids[i], predicted=p) for i, p in zip(mine, got)])
  common.barrier("eval-refusal: every host judged its share")
  if host.index != 0:
    return None
  records = shards.merged(ids)
  shards.remove()
  return [rec["predicted"] for rec in records]


def run(config) -> dict:
  r = config.refusal
  data = common.repo_path(r.data) if r.data else str(refusal.builtin_labelled_path())
  items = refusal.load_labelled(data)
  predictions = classify_on_hosts(config, items)
  if predictions is None:  # another host: host 0 reports
    return common.finish("eval-refusal", dict(hosts=common.host().count, host=common.host().index))
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
