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


SMALL_N = 20  # rates and accuracies from fewer items are marked as such


def _rate(n: int, count: int, ci) -> str:
  """"count/n = rate [lo, hi]" with a mark when n < SMALL_N."""
  text = f"{count}/{n} = {count / n:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if n else "n = 0"
  return text + (f" (n < {SMALL_N})" if 0 < n < SMALL_N else "")


def headline_lines(summaries: Mapping[str, Mapping]) -> list[str]:
  """The run's result first: each evaluated model's over-refusal and unsafe compliance
  (eval-safety), harmlessness against the base model (eval-harmless) and the HHH accuracy
  (eval-hhh), every rate with its n and 95% interval; [] when no evaluation ran."""
  safety, harmless = summaries.get("eval-safety") or {}, summaries.get("eval-harmless") or {}
  rows: dict[str, dict[str, str]] = {}
  for m in safety.get("models", []):
    row = rows.setdefault(str(m["model"]), {})
    for key, label in (("orr", "over-refusal (safe prompts)"), ("ucr", "unsafe compliance")):
      r = m[key]
      row[label] = _rate(int(r["n"]), int(r["count"]), r["ci95"])
  for m in harmless.get("models", []):
    row = rows.setdefault(str(m["model"]), {})
    small = f" (n < {SMALL_N})" if m["n"] < SMALL_N else ""
    row["harmlessness vs base, mean difference"] = (
        f"{m['mean_difference']:+.2f} [{m['ci95'][0]:+.2f}, {m['ci95'][1]:+.2f}], n = {m['n']}{small}")
    row["win rate vs base"] = (f"{m['win_rate']:.2f} [{m['win_rate_ci95'][0]:.2f}, "
                               f"{m['win_rate_ci95'][1]:.2f}]")
  lines = []
  if rows:
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    lines += ["## Headline", "", "| model | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([model] + [row.get(c, "-") for c in columns]) + " |"
              for model, row in rows.items()]
    lines.append("")
  hhh = summaries.get("eval-hhh") or {}
  for judge, label in (("judge", "the policy as an HHH judge"), ("rm", "the reward model")):
    r = hhh.get(judge)
    if isinstance(r, Mapping) and r.get("n"):
      lines.append(f"- HHH accuracy of {label}: {_rate(int(r['n']), int(r['n_correct']), r['ci95'])}")
  if hhh.get("judge") or hhh.get("rm"):
    lines.append("")
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
  lines += headline_lines(summaries)
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


def plot_ablation(rows: Sequence[Mapping], out_png: pathlib.Path, *,
                  outcome_labels: Mapping[str, str] | None = None, x_label: str = "setting",
                  title: str = "", error_bars: str = "sem", x_scale: str = "linear",
                  ) -> dict[str, dict[str, list]] | None:
  """The paper's ablation figure: a panel per outcome, its mean over seeds against the ablated
  setting with error bars (`error_bars`: "sem" or "std" of the rows), each seed's value as
  a faint dot. `rows`: {"label", "x" (a number, or None for a categorical axis), "outcome",
  "values", "mean", "std", "sem"} per setting and outcome (sweep.Aggregate.row()).

  Returns what was drawn, {outcome: {"x", "mean", "err", "labels"}} (err 0 where n < 2),
  or None when no outcome has a value."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  outcomes = [o for o in dict.fromkeys(r["outcome"] for r in rows)
              if any(r["values"] for r in rows if r["outcome"] == o)]
  if not outcomes:
    return None
  labels = list(dict.fromkeys(r["label"] for r in rows))
  categorical = any(r["x"] is None for r in rows)
  fig, axes = plt.subplots(1, len(outcomes), figsize=(4.2 * len(outcomes), 3.4), squeeze=False)
  drawn: dict[str, dict[str, list]] = {}
  for ax, outcome in zip(axes[0], outcomes):
    mine = [r for r in rows if r["outcome"] == outcome and r["values"]]
    xs = [labels.index(r["label"]) if categorical else r["x"] for r in mine]
    means = [r["mean"] for r in mine]
    errs = [0.0 if r[error_bars] is None or math.isnan(r[error_bars]) else r[error_bars]
            for r in mine]
    for x, r in zip(xs, mine):  # each seed's own value, so n and the spread stay visible
      ax.plot([x] * len(r["values"]), r["values"], ".", color="0.6", alpha=0.6, zorder=1)
    ax.errorbar(xs, means, yerr=errs, marker="o", capsize=4, zorder=2)
    drawn[outcome] = dict(x=xs, mean=means, err=errs, labels=[r["label"] for r in mine])
    if categorical:
      ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    else:
      if x_scale == "log":
        ax.set_xscale("log", base=2)
      ax.set_xticks(xs, [r["label"] for r in mine])  # the settings themselves, not 0.5 steps
    ax.set_title(outcome)
    ax.set_xlabel(x_label)
    ax.set_ylabel((outcome_labels or {}).get(outcome, outcome))
    ax.grid(alpha=0.3)
  n_seeds = max(len(r["values"]) for r in rows)
  fig.suptitle(f"{title} (mean ± {error_bars} over up to {n_seeds} seeds)".strip())
  fig.tight_layout()
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return drawn
