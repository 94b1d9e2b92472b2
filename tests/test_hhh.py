"""HHH evaluation: loader on the real file, judge / CoT / reward-model scoring with stubs, plot."""

import json

import numpy as np
import pytest

from cai_jax.evals import hhh
from cai_jax.evals import multiple_choice as mc


def _item(i, correct):
  conv = f"\n\nHuman: question {i}?"
  good, bad = f"good answer {i}", f"bad answer {i}"
  a, b = (good, bad) if correct == " (A)" else (bad, good)
  return {"prompt": f"\n\nConsider:{conv}\n\nPick one. Options:\n (A) [[[{a}]]]\n (B) [[[{b}]]]\n\n"
                    "The answer is:",
          "corrects": [correct], "incorrects": [" (B)" if correct == " (A)" else " (A)"],
          "text_correct": f"{conv}\n\nAssistant: {good}", "text_incorrect": f"{conv}\n\nAssistant: {bad}"}


def _write(tmp_path, records):
  path = tmp_path / "hhh.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def _judge(prompts, conts):
  """Prefers the option holding "good", except on question 3 where it always says (A)."""
  out = []
  for p, c in zip(prompts, conts):
    body = p.split("Options:")[-1]
    a_good = body.index("good") < body.index("bad")
    if "question 3?" in p:
      a_good = True
    out.append(-0.1 if (c == " (A)") == a_good else -2.0)
  return np.array(out)


def test_judge_cot_and_rm_on_known_answers(tmp_path):
  letters = [" (A)", " (B)", " (B)", " (B)", " (A)"]
  items = hhh.load_hhh(_write(tmp_path, [_item(i, c) for i, c in enumerate(letters)]))
  seen = []

  def gen(prompts):
    seen.extend(prompts)
    return [" hmm "] * len(prompts)

  def rm(good, bad):  # reward = length of the last answer; item 1's good answer loses
    r = lambda conv: len(conv[-1][1]) + (-100 if conv[-1][1] == "good answer 1" else 0)  # noqa: E731
    return np.array([r(g) - r(b) for g, b in zip(good, bad)], float)

  res = hhh.evaluate(items, logprob_fn=_judge, generate_fn=gen, cot_limit=2, rm_score_fn=rm)
  assert res["judge"].correct.tolist() == [True, True, True, False, True]
  assert res["judge"].accuracy == 0.8
  assert (res["judge"].ci_low, res["judge"].ci_high) == mc.wilson_interval(4, 5)
  assert res["judge_cot"].n == 2 and res["judge_cot"].accuracy == 1.0
  assert len(seen) == 2 and seen[0].endswith("(B) [[[bad answer 0]]]\n\nLet's think step by step:")
  assert res["rm"].correct.tolist() == [True, False, True, True, True]
  hhh.plot(res, tmp_path / "hhh.png", "test")
  assert (tmp_path / "hhh.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cot_prompt_text():
  item = mc.MCItem("X Options:\n (A) a\n (B) b\n\nThe answer is:", (" (A)",), (" (B)",))
  assert hhh.cot_prompts([item], lambda ps: ["  because.  "]) == [
      "X Options:\n (A) a\n (B) b\n\nLet's think step by step: because.\nSo the answer is:"]


def test_malformed_hhh_files(tmp_path):
  bad = _item(0, " (A)")
  del bad["text_incorrect"]
  with pytest.raises(mc.EvalDataError, match="hhh.jsonl:2:text_incorrect: expected a non-empty string"):
    hhh.load_hhh(_write(tmp_path, [_item(1, " (A)"), bad]))
  bad = dict(_item(0, " (A)"), prompt="no answer cue")
  with pytest.raises(mc.EvalDataError, match="hhh.jsonl:1:prompt: expected the multiple-choice form"):
    hhh.load_hhh(_write(tmp_path, [bad]))
  bad = dict(_item(0, " (A)"), text_correct="not a transcript")
  items = hhh.load_hhh(_write(tmp_path, [bad]))
  with pytest.raises(ValueError, match="hhh.jsonl:1:text_correct: expected a transcript"):
    hhh.rm_result(items, lambda g, b: np.zeros(len(g)))


def test_real_hhh_file_loads(shared_data):
  items = hhh.load_hhh(shared_data / "cai_paper/evals/438HHHEvaluations.jsonl")
  assert len(items) == 438
  assert all(set(it.corrects + it.incorrects) == {" (A)", " (B)"} for it in items)
  assert hhh.load_hhh(shared_data / "cai_paper/evals/438HHHEvaluations.jsonl", limit=10)[9] == items[9]
