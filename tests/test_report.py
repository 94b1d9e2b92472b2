"""The report: metric series, plots and the markdown table."""

import json

import pytest

from cai_jax import report
from cai_jax.layout import RunLayout


def _write_metrics(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_series_filters_by_stage_and_key(tmp_path):
  records = [{"step": 1, "stage": "sft", "loss": 2.0}, {"step": 1, "stage": "rm", "loss": 9.0},
             {"step": 2, "stage": "sft", "loss": 1.5}, {"step": 3, "stage": "sft", "other": 1}]
  assert report.series(records, "sft", "loss") == ([1, 2], [2.0, 1.5])


def test_write_report_makes_plots_and_table(tmp_path):
  (tmp_path / "ppo").mkdir()
  _write_metrics(tmp_path / "ppo" / "metrics.jsonl",
                 [{"step": s, "stage": "ppo", "reward_mean": 0.1 * s, "kl": 0.01 * s} for s in range(5)])
  out = report.write_report(RunLayout(tmp_path), {"ppo": {"final": {"reward_mean": 0.4}}, "hhh": {"accuracy": 0.5}})
  text = out.read_text()
  assert "| final.reward_mean | 0.4 |" in text
  assert "| accuracy | 0.5 |" in text
  assert (tmp_path / "plots" / "ppo.png").stat().st_size > 1000
  assert "![ppo](plots/ppo.png)" in text
  assert not (tmp_path / "plots" / "sft.png").exists()  # no sft metrics, no empty plot
  assert json.loads((tmp_path / "summary.json").read_text())["hhh"]["accuracy"] == 0.5


def test_malformed_metrics_line_names_file_and_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
    report.read_jsonl(tmp_path / "metrics.jsonl")


def test_a_list_of_rows_renders_as_its_own_table(tmp_path):
  rows = [{"round": 0, "n": 3, "refusal_rate": 0.25}, {"round": 1, "n": 3, "refusal_rate": 0.5}]
  out = report.write_report(RunLayout(tmp_path), {"sl-data": {"written": 3, "quality": {"red_team": rows}}})
  text = out.read_text()
  assert "| written | 3 |" in text and "quality.red_team | [" not in text
  assert "**sl-data: quality.red_team**" in text
  assert "| round | n | refusal_rate |" in text and "| 1 | 3 | 0.5 |" in text


def test_nested_dicts_in_rows_become_dotted_columns():
  rows = [{"model": "a", "orr": {"rate": 0.25, "ci95": [0.1, 0.5]}}]
  assert report.table_lines(rows) == ["| model | orr.rate | orr.ci95 |", "|---|---|---|",
                                      "| a | 0.25 | [0.1, 0.5] |"]


def test_the_report_opens_with_the_headline_rates_with_n_and_intervals(tmp_path):
  safety = {"models": [
      {"model": "base", "orr": {"n": 25, "count": 0, "ci95": [0.0, 0.1332]},
       "ucr": {"n": 12, "count": 9, "ci95": [0.4677, 0.9111]}},
      {"model": "sft", "orr": {"n": 25, "count": 5, "ci95": [0.0886, 0.3913]},
       "ucr": {"n": 12, "count": 3, "ci95": [0.0889, 0.5323]}}]}
  harmless = {"models": [{"model": "sft", "n": 40, "mean_difference": 0.25, "ci95": [-0.1, 0.6],
                          "win_rate": 0.6, "win_rate_ci95": [0.45, 0.74]}]}
  hhh = {"judge": {"n": 24, "n_correct": 12, "accuracy": 0.5, "ci95": [0.3143, 0.6857]}}
  out = report.write_report(RunLayout(tmp_path), {"eval-safety": safety, "eval-harmless": harmless,
                                                  "eval-hhh": hhh})
  text = out.read_text()
  assert text.index("## Headline") < text.index("## eval-safety")
  assert "| base | 0/25 = 0.00 [0.00, 0.13] | 9/12 = 0.75 [0.47, 0.91] (n < 20) | - | - |" in text
  assert ("| sft | 5/25 = 0.20 [0.09, 0.39] | 3/12 = 0.25 [0.09, 0.53] (n < 20) | "
          "+0.25 [-0.10, +0.60], n = 40 | 0.60 [0.45, 0.74] |") in text
  assert "- HHH accuracy of the policy as an HHH judge: 12/24 = 0.50 [0.31, 0.69]\n" in text


def test_a_run_without_evaluations_has_no_headline(tmp_path):
  out = report.write_report(RunLayout(tmp_path), {"sft": {"steps": 3}})
  assert "Headline" not in out.read_text()
