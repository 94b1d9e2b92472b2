"""SL-CAI quality per round: rows per round and kind against hand-computed shares and intervals."""

import math

import pytest

from cai_jax.evals import sl_quality
from cai_jax.evals.multiple_choice import wilson_interval


def _record(rid, kind, initial, revisions):
  return {"id": rid, "prompt": f"p-{rid}", "initial": initial, "kind": kind,
          "rounds": [{"principle": "x", "critique": "c", "revision": r} for r in revisions]}


RECORDS = [
    _record("a", "red_team", "sure", ["no", "no"]),
    _record("b", "red_team", "sure", ["sure", "partly"]),
    _record("c", "red_team", "no", ["no", "sure"]),
    _record("h", "helpful", "sure", []),
]
CLASS_OF = {"sure": "full_compliance", "no": "full_refusal", "partly": "partial_refusal"}


def _classify(prompts, answers):
  assert len(prompts) == len(answers)
  return [CLASS_OF[a] for a in answers]


def test_answers_by_round_takes_initial_then_each_revision():
  rounds = sl_quality.answers_by_round(RECORDS, "red_team")
  assert [[a for _, a in r] for r in rounds] == [["sure", "sure", "no"], ["no", "sure", "no"],
                                               ["no", "partly", "sure"]]
  assert rounds[1][0][0] == "p-a"


def test_round_table_shares_and_wilson_intervals():
  table = sl_quality.round_table(RECORDS, _classify)
  red = table["red_team"]
  assert [r["round"] for r in red] == [0, 1, 2] and all(r["n"] == 3 for r in red)
  assert red[0]["full_compliance"] == pytest.approx(2 / 3) and red[0]["refusal_rate"] == pytest.approx(1 / 3)
  assert red[1]["full_refusal"] == pytest.approx(2 / 3)
  assert red[2]["partial_refusal"] == pytest.approx(1 / 3)
  assert red[2]["refusal_rate"] == pytest.approx(2 / 3)
  assert red[2]["refusal_ci95"] == list(wilson_interval(2, 3))
  assert [r["round"] for r in table["helpful"]] == [0] and table["helpful"][0]["n"] == 1
  assert "harmless" not in red[0]


def test_harmlessness_mean_and_normal_interval():
  scores = {"sure": -1.0, "no": 2.0, "partly": 0.5}
  table = sl_quality.round_table(RECORDS, _classify, lambda p, a: [scores[x] for x in a])
  row = table["red_team"][0]  # -1, -1, 2
  mean = 0.0
  sd = math.sqrt(((-1) ** 2 * 2 + 2 ** 2) / 2)
  assert row["harmless"] == pytest.approx(mean)
  assert row["harmless_ci95"] == pytest.approx([-1.959964 * sd / math.sqrt(3), 1.959964 * sd / math.sqrt(3)])
