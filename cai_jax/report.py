"""Plots and a markdown summary from a run's metrics files.

Every training stage appends {"step", "stage", <metric>: value, ...} lines to
its metrics.jsonl (train/loop.py; where: layout.py); every stage returns a
summary dict that the pipeline stores in `<workdir>/summary.json`. This module
turns both into PNG curves (`<workdir>/plots/`) and `<workdir>/report.md`.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence

from cai_jax.layout import RunLayout

# Metrics worth a curve, per stage, in the order they are plotted.
CURVES: dict[str, Sequence[str]] = {
    "sft": ("loss", "accuracy"),
    "rm": ("loss", "accuracy"),
    "ppo": ("reward_mean", "kl", "entropy", "value_loss"),
    "dpo": ("loss", "reward_accuracy", "reward_margin"),
}


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """All records of a JSONL file ([] when it does not exist); bad lines name file and line."""
  from cai_jax.data.jsonl import iter_jsonl
  return [record for _, record in iter_jsonl(path)] if pathlib.Path(path).exists() else []


def series(records: Iterable[Mapping], stage: str, key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of one metric of one stage, skipping records without it."""
  steps, values = [], []
  for r in records:
    if r.get("stage") == stage and isinstance(r.get(key), (int, float)) and "step" in r:
      steps.append(int(r["step"]))
      values.append(float(r[key]))
  return steps, values


def plot_stage(records: Sequence[Mapping], stage: str, out_png: pathlib.Path,
               keys: Sequence[str] | None = None) -> pathlib.Path | None:
  """One PNG with a panel per metric; None when the stage logged none of them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k in (keys or CURVES.get(stage, ())) if series(records, stage, k)[0]]
  if not keys:
    return None
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
  for ax, key in zip(axes[0], keys):
    steps, values = series(records, stage, key)
    ax.plot(steps, values, marker="." if len(steps) < 50 else None)
    ax.set_title(f"{stage}: {key}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png


def _fmt(value) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.4g}"
  if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
    return "[" + ", ".join(_fmt(float(v)) for v in value) + "]"
  return str(value)


def flatten(summary: Mapping, prefix: str = "") -> dict[str, object]:
  """{"a": {"b": 1}} -> {"a.b": 1}, for the summary table."""
  flat = {}
  for k, v in summary.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      flat.update(flatten(v, name + "."))
    else:
      flat[name] = v
  return flat


def _is_table(value) -> bool:
  """A non-empty list of dicts (e.g. one row per revision round) renders as its own table."""
  return isinstance(value, list) and bool(value) and all(isinstance(r, Mapping) for r in value)


def table_lines(rows: Sequence[Mapping]) -> list[str]:
  """A markdown table with the union of the rows' keys as columns (first-seen order); nested
  dicts in a row become dotted columns (orr.rate, orr.ci95, ...)."""
  rows = [flatten(r) for r in rows]
  columns = list(dict.fromkeys(k for r in rows for k in r))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return lines


def write_report(layout: RunLayout, summaries: Mapping[str, Mapping],
                 title: str = "cai_jax run report", notes: Sequence[str] = ()) -> pathlib.Path:
  """Writes plots + report.md (+ summary.json) of a run; returns report.md's path."""
  workdir = layout.root
  records = []
  for path in layout.metrics_files():
    records += read_jsonl(path)
  plots = []
  for stage in CURVES:
    png = plot_stage(records, stage, layout.plots / f"{stage}.png")
    if png:
      plots.append(png)
  (workdir / "summary.json").write_text(json.dumps(summaries, indent=2, default=str))

  lines = [f"# {title}", ""]
  lines += [f"- {n}" for n in notes]
  if notes:
    lines.append("")
  for stage, summary in summaries.items():
    flat = flatten(summary)
    lines += [f"## {stage}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in flat.items() if not _is_table(v)]
    lines.append("")
    for k, v in flat.items():
      if _is_table(v):
        lines += [f"**{stage}: {k}**", ""] + table_lines(v) + [""]
  plots += [p for p in layout.figures() if p.is_file()]
  if plots:
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(workdir)})" for p in plots]
  out = layout.report
  out.write_text("\n".join(lines) + "\n")
  return out
