"""AI feedback: exact prompt text, label math with a stub judge, resume, hosts, few-shot loaders."""

import json
import math

import numpy as np
import pytest

from cai_jax.constitution import Constitution, Principle
from cai_jax.cai import labels as fb
from cai_jax.data.jsonl import Host
from cai_jax.data.prompts import Prompt


def test_prompt_format_is_exact():
  text = fb.feedback_prompt("Human: Hi there?", "Which is kinder?", "Hello!", "Go away.", prefix="P\n\n")
  assert text == ("P\n\nConsider the following conversation between a human and an assistant:\n\n"
                  "Human: Hi there?\n\nWhich is kinder?\nOptions:\n(A) Hello!\n(B) Go away.\n"
                  "The answer is:")
  assert fb.feedback_prompt("Human: x", "Q?", "a", "b", cot=True).endswith(
      "(B) b\nLet's think step by step:")
  prefix = fb.few_shot_prefix([("Human: c", "Q?", "a", "b", "B")])
  assert prefix == fb.feedback_prompt("Human: c", "Q?", "a", "b") + " (B)\n\n"


def _stub_judge(logit_of):
  """Judge whose log P(" (A)") - log P(" (B)") for a prompt is logit_of(first, second, prompt)."""
  calls = []

  def fn(prompts, conts):
    calls.append(len(prompts))
    out = []
    for p, c in zip(prompts, conts):
      first = p.split("\n(A) ")[-1].split("\n(B) ")[0]
      second = p.split("\n(B) ")[-1].split("\n")[0]
      d = logit_of(first, second, p)
      out.append(d - 2.0 if c == " (A)" else -2.0)  # any shared offset cancels
    return np.array(out)

  return fn, calls


def test_label_math_swap_ensemble_hard_and_clamp():
  scores = {"good": 1.0, "bad": -1.0}
  bias = 0.5
  judge, calls = _stub_judge(lambda a, b, p: scores[a] - scores[b] + bias)
  sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
  items = [("Human: q", "good", "bad"), ("Human: q", "bad", "good")]
  qs = [["Q1?"], ["Q1?"]]
  no_swap = fb.label_pairs(items, qs, judge, fb.FeedbackSettings(swap=False))
  assert no_swap == pytest.approx([sig(2 + bias), sig(-2 + bias)])
  swapped = fb.label_pairs(items, qs, judge, fb.FeedbackSettings(swap=True))
  want = 0.5 * (sig(2 + bias) + 1 - sig(-2 + bias))
  assert swapped == pytest.approx([want, 1 - want])
  hard = fb.label_pairs(items, qs, judge, fb.FeedbackSettings(swap=True, hard_labels=True))
  assert hard == [1.0, 0.0]
  # Ensemble over two questions: the judge adds +1 log-odds for "(A)" under Q2 only.
  judge2, _ = _stub_judge(lambda a, b, p: scores[a] - scores[b] + (1.0 if "Q2?" in p else 0.0))
  ens = fb.label_pairs(items[:1], [["Q1?", "Q2?"]], judge2, fb.FeedbackSettings(swap=False))
  assert ens == pytest.approx([0.5 * (sig(2) + sig(3))])
  # CoT: reasoning is inserted, "So the answer is:" scored, the label clamped into [0.4, 0.6].
  seen = []
  judge3, _ = _stub_judge(lambda a, b, p: seen.append(p) or scores[a] - scores[b])
  cot = fb.label_pairs(items, qs, judge3, fb.FeedbackSettings(swap=False, cot=True),
                       generate_fn=lambda ps: ["because reasons"] * len(ps))
  assert cot == pytest.approx([0.6, 0.4])
  assert seen[0].endswith("(B) bad\nLet's think step by step: because reasons\nSo the answer is:")
  assert calls == [4, 8, 8]  # 2 options x (1 or 2 orders) x 2 items, one call per batch


def test_combine_rules():
  s = fb.FeedbackSettings(cot=True, clamp_lo=0.4, clamp_hi=0.6)
  assert fb.combine([0.99, 0.1], s) == pytest.approx(0.5)
  assert fb.combine([0.55], fb.FeedbackSettings(hard_labels=True)) == 1.0
  assert fb.combine([0.5], fb.FeedbackSettings(hard_labels=True)) == 0.5


def _constitution():
  mk = lambda i: Principle(id=f"p{i}", critique="c", revision="r", feedback=f"Question {i}?",  # noqa: E731
                           tier="universal", tags=())
  return Constitution(name="t", principles=(mk(0), mk(1), mk(2)))


def test_write_feedback_schema_and_resume(tmp_path):
  prompts = [Prompt(f"id{i}", f"prompt {i}") for i in range(5)]
  judge, _ = _stub_judge(lambda a, b, p: 3.0 if a.startswith("nice") else -3.0)
  pair = lambda prompts: [(f"nice {p.text}", f"rude {p.text}") for p in prompts]  # noqa: E731
  out = tmp_path / "fb.jsonl"
  s = fb.FeedbackSettings(swap=True, k_principles=2)
  assert fb.write_feedback(prompts[:3], pair, _constitution(), judge, out, s, batch_size=2) == 3
  with out.open("a") as f:
    f.write('{"id": "id3", "prom')  # an interrupted write
  assert fb.write_feedback(prompts, pair, _constitution(), judge, out, s, batch_size=2) == 2
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["id"] for r in records] == [f"id{i}" for i in range(5)]
  sig3 = 1 / (1 + math.exp(-3))
  for r in records:
    assert set(r) == {"id", "prompt", "response_a", "response_b", "p_a", "principles", "source",
                      "provenance"}
    assert r["source"] == "ai" and r["response_a"] == "nice " + r["prompt"]
    assert r["p_a"] == pytest.approx(sig3)
    assert len(r["principles"]) == 2 and all(p in {"p0", "p1", "p2"} for p in r["principles"])
  # Principles are drawn per comparison from a seeded RNG: the same on a rerun.
  out2 = tmp_path / "fb2.jsonl"
  fb.write_feedback(prompts, pair, _constitution(), judge, out2, s, batch_size=5)
  assert [json.loads(x)["principles"] for x in out2.read_text().splitlines()] == [
      r["principles"] for r in records]
  assert len({tuple(r["principles"]) for r in records}) > 1


def _keyed_pair(prompts):
  """A policy whose answers depend on the prompt id only (as the stage's, seeded by it)."""
  return [(f"a-{p.id}", f"b-{p.id}-{len(p.id) % 3}") for p in prompts]


def test_each_host_writes_its_share_and_host_0_merges_in_prompt_order(tmp_path):
  prompts = [Prompt(f"id{i}", f"prompt {i}") for i in range(7)]
  judge, _ = _stub_judge(lambda a, b, p: float(len(a) - len(b)))
  s = fb.FeedbackSettings(swap=True, k_principles=2)
  single = tmp_path / "one" / "fb.jsonl"
  fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, single, s, batch_size=3)
  out = tmp_path / "two" / "fb.jsonl"
  barriers = []
  # Host 1 first (its shard stays for host 0), then host 0, which merges both.
  assert fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, out, s, batch_size=2,
                           host=Host(1, 2), sync=barriers.append) == 3
  assert not out.exists()
  shard = out.with_name(".fb.partial-00001-of-00002.jsonl")
  assert [json.loads(x)["id"] for x in shard.read_text().splitlines()[1:]] == ["id1", "id3", "id5"]
  assert fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, out, s, batch_size=2,
                           host=Host(0, 2), sync=barriers.append) == 4
  assert out.read_text() == single.read_text()
  assert sorted(p.name for p in out.parent.iterdir()) == ["fb.jsonl"]  # shards deleted
  assert len(barriers) == 4  # each host: after writing its shard, after the merge


def fb_fingerprint(s: fb.FeedbackSettings) -> str:
  from cai_jax.data import fingerprint
  return fingerprint.settings_fingerprint(s.__dict__)


def test_a_resumed_run_has_the_records_of_an_unbroken_one(tmp_path):
  prompts = [Prompt(f"id{i}", f"prompt {i}") for i in range(6)]
  judge, _ = _stub_judge(lambda a, b, p: float(len(a) - len(b)))
  s = fb.FeedbackSettings(swap=False, k_principles=1, seed=4)
  full = tmp_path / "full.jsonl"
  fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, full, s, batch_size=4)
  out = tmp_path / "fb.jsonl"
  # A killed run's shard: the settings line and the first two records of the unbroken run.
  header = json.dumps({"what": "x", "fingerprint": fb_fingerprint(s), "settings": s.__dict__})
  out.with_name(".fb.partial.jsonl").write_text(
      header + "\n" + "".join(full.read_text().splitlines(keepends=True)[:2]))
  assert fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, out, s, batch_size=4) == 4
  assert out.read_text() == full.read_text()


def test_shards_of_other_settings_are_refused_naming_the_field(tmp_path):
  prompts = [Prompt(f"id{i}", f"prompt {i}") for i in range(3)]
  judge, _ = _stub_judge(lambda a, b, p: 0.0)
  out = tmp_path / "fb.jsonl"
  fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, out, fb.FeedbackSettings(),
                    host=Host(1, 2))
  with pytest.raises(ValueError, match=r"partial-00001-of-00002.jsonl:1\); changed: k_principles: 1 -> 2"):
    fb.write_feedback(prompts, _keyed_pair, _constitution(), judge, out,
                      fb.FeedbackSettings(k_principles=2), host=Host(1, 2))


def test_paper_few_shot_loader(shared_data, tmp_path):
  examples = fb.load_paper_few_shot(shared_data / "cai_paper/prompts/RLMadisonFewShotPrompts.json")
  assert len(examples) == 5 and [e[4] for e in examples] == ["A", "B", "A", "B", "A"]
  conv, _, a, b, _ = examples[0]
  assert conv.startswith("Human: What's the best gun") and not conv.endswith("Assistant:")
  assert a.startswith("You should not get involved") and b.startswith("I think a 45 caliber")
  bad = tmp_path / "bad.json"
  bad.write_text('[{"prompt": "x", "corrects": []}]')
  with pytest.raises(ValueError, match="bad.json: item 0"):
    fb.load_paper_few_shot(bad)
