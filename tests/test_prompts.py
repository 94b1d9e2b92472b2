"""Prompt sets: the shipped ones and the hh-rlhf loader."""

import gzip
import json

import pytest

from cai_jax.data import prompts as P


def test_builtin_red_team_set_is_large_and_varied():
  red = P.load_prompts("red_team")
  assert len(red) >= 50
  assert len({p.category for p in red}) >= 6
  assert len({p.id for p in red}) == len(red)
  assert all(p.text and p.text == p.text.strip() for p in red)


def test_builtin_helpful_set():
  helpful = P.load_prompts("helpful")
  assert len(helpful) >= 30 and all(p.id.startswith("hp-") for p in helpful)


def test_first_human_turn_of_a_transcript():
  t = "\n\nHuman: hello there\nsecond line\n\nAssistant: hi\n\nHuman: more"
  assert P.first_human_turn(t) == "hello there\nsecond line"
  assert P.first_human_turn("\n\nHuman: only one") == "only one"
  assert P.first_human_turn("no turns") is None


def test_hh_rlhf_loader_on_the_reference_file(shared_data):
  path = shared_data / "hh_rlhf" / "harmless-base-test.jsonl.gz"
  with gzip.open(path, "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  expected = []
  for r in records:  # reference: text between the first "Human:" and the next turn marker
    head = r["chosen"].split("\n\nHuman:", 1)[1]
    text = min((head.split(m, 1)[0] for m in ("\n\nAssistant:", "\n\nHuman:")), key=len).strip()
    if text not in expected:
      expected.append(text)
  got = P.load_prompts(str(path))
  assert [p.text for p in got] == expected
  assert len(got) > 1000 and got[0].id == "harmless-base-test-000001"
  assert [p.text for p in P.load_prompts(str(path), limit=5)] == expected[:5]


def test_bad_lines_name_file_and_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "ok"}\n{"text": "wrong field"}\n')
  with pytest.raises(ValueError, match=r"p\.jsonl:2: expected a field 'prompt'"):
    P.load_prompts(str(path))
  path.write_text('{"prompt": "ok"}\n{oops\n')
  with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
    P.load_prompts(str(path))
  with pytest.raises(ValueError, match="neither a built-in set"):
    P.load_prompts(str(tmp_path / "missing.jsonl"))
