"""Constitution files: our TOML, profiles and their layering rule, the paper's JSON."""

import pathlib
import re

import numpy as np
import pytest

from cai_jax import constitution as C

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = REPO / "constitutions" / "base.toml"

PRINCIPLE_A = '''
[[principle]]
id = "a"
tier = "universal"
critique = "c"
revision = "r"
feedback = "f"
'''
PRINCIPLE_B = '''
[[principle]]
id = "b"
tier = "style"
tags = ["x"]
critique = "c2"
revision = "r2"
feedback = "f2"
'''
GOOD = PRINCIPLE_A + PRINCIPLE_B


def test_base_constitution_loads_with_its_few_shot_examples():
  con = C.load_constitution(BASE)
  assert len(con.principles) >= 16
  assert len(set(con.ids)) == len(con.ids)
  assert {p.tier for p in con.principles} == set(C.TIERS)
  assert len(con.few_shot) == 5
  first = con.few_shot[0]
  assert first.messages[0][0] == "user" and first.messages[-1][0] == "assistant"
  assert first.critique_request == con.get("avoid-harm").critique  # resolved from `principle = id`


def test_sample_is_uniform_with_replacement_and_seeded():
  con = C.load_constitution(BASE)
  draws = con.sample(np.random.default_rng(0), 20_000)
  assert draws == con.sample(np.random.default_rng(0), 20_000)
  counts = np.array([sum(d.id == pid for d in draws) for pid in con.ids])
  expected = 20_000 / len(con.ids)
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_profile_adds_overrides_and_removes_but_keeps_universal(tmp_path):
  base = C.load_constitution(BASE)
  con = C.load_constitution(BASE, profile=REPO / "constitutions/profiles/eu_healthcare.toml")
  assert con.name == "cai-jax-base+eu-healthcare"
  assert con.tier("universal") == base.tier("universal")
  assert "clear-and-concise" not in con.ids and "health-data-minimisation" in con.ids
  old, new = base.get("expert-topics-care"), con.get("expert-topics-care")
  assert new.critique != old.critique and new.feedback == old.feedback and new.tags == old.tags
  assert dict(con.context)["region"] == "EU"
  assert len(con.principles) == len(base.principles)  # one removed, one added


def _write(tmp_path, body, name="bad.toml"):
  path = tmp_path / name
  path.write_text(body)
  return path


# (file body, profile body or None, expected message pieces: file name, principle id, field)
MALFORMED = {
    "toml-syntax": ('[[principle]]\nid = "a\n', None, [r"bad\.toml", "invalid TOML", "line 2"]),
    "no-principles": ('name = "empty"\n', None, [r"bad\.toml", "no \\[\\[principle\\]\\]"]),
    "missing-field": ('[[principle]]\nid = "a"\ncritique = "c"\nrevision = "r"\n', None,
                      [r"bad\.toml", "principle 'a'", "field 'feedback' is missing"]),
    "empty-text": (GOOD.replace('revision = "r2"', 'revision = "  "'), None,
                   [r"bad\.toml", "principle 'b'", "field 'revision'", "non-empty string"]),
    "wrong-type": (GOOD.replace('critique = "c"', "critique = 3"), None,
                   [r"bad\.toml", "principle 'a'", "field 'critique'"]),
    "unknown-tier": (GOOD.replace('"style"', '"optional"'), None,
                     [r"bad\.toml", "principle 'b'", "field 'tier'", "universal"]),
    "tags-not-list": (GOOD.replace('["x"]', '"x"'), None,
                      [r"bad\.toml", "principle 'b'", "field 'tags'", "list of strings"]),
    "typo-field": (GOOD.replace('feedback = "f2"', 'feedback = "f2"\ncritque = "z"'), None,
                   [r"bad\.toml", "principle 'b'", "field 'critque'", "did you mean 'critique'"]),
    "duplicate-id": (GOOD.replace('id = "b"', 'id = "a"'), None,
                     [r"bad\.toml", "principle 'a'", "field 'id' is duplicated"]),
    "bad-id": (GOOD.replace('id = "b"', 'id = "Has Spaces"'), None,
               [r"bad\.toml", "principle 'Has Spaces'", "field 'id' must match"]),
    "missing-id": (GOOD.replace('id = "b"\n', ""), None,
                   [r"bad\.toml", "principle #2", "field 'id' is missing"]),
    "few-shot-missing": ('few_shot = "nope.toml"\n' + GOOD, None, [r"nope\.toml", "file not found"]),
    "few-shot-unknown-principle": (
        'few_shot = "shots.toml"\n' + GOOD, None, [r"shots\.toml", "example #1", "field 'principle'"]),
    "profile-overrides-universal": (GOOD, '[[override]]\nid = "a"\ncritique = "x"\n',
                                    [r"profile\.toml", "principle 'a'", "field 'override'",
                                     "universal-tier"]),
    "profile-removes-universal": (GOOD, 'remove = ["a"]\n',
                                  [r"profile\.toml", "principle 'a'", "field 'remove'", "universal-tier"]),
    "profile-adds-universal": (GOOD, PRINCIPLE_A.replace('id = "a"', 'id = "new"'),
                               [r"profile\.toml", "principle 'new'", "field 'tier'"]),
    "profile-duplicate-id": (GOOD, PRINCIPLE_B,
                             [r"profile\.toml", "principle 'b'", "field 'id' already exists"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_give_errors_naming_file_principle_and_field(tmp_path, case):
  body, profile, pieces = MALFORMED[case]
  path = _write(tmp_path, body)
  _write(tmp_path, '[[example]]\nprompt="p"\nanswer="a"\nprinciple="zzz"\ncritique="c"\nrevision="r"\n',
         "shots.toml")
  profile_path = _write(tmp_path, profile, "profile.toml") if profile is not None else None
  with pytest.raises(C.ConstitutionError) as err:
    C.load_constitution(path, profile=profile_path)
  for piece in pieces:
    assert re.search(piece, str(err.value)), (piece, str(err.value))


def test_paper_prompts_load_as_a_constitution(shared_data):
  con = C.load_paper_prompts(shared_data / "cai_paper" / "prompts")
  assert len(con.principles) == 16 and len(con.few_shot) == 5
  p0 = con.get("paper-harmful0")
  assert p0.critique.startswith("Identify specific ways in which the assistant's last response")
  assert not p0.critique.endswith("Critique:") and "CritiqueRequest" not in p0.critique
  assert p0.revision.startswith("Please rewrite the assistant response")
  assert p0.feedback.startswith("Please choose the assistant response") and "Options:" not in p0.feedback
  shot = con.few_shot[0]
  assert [r for r, _ in shot.messages] == ["user", "assistant", "user", "assistant"]
  assert shot.messages[0][1].startswith("Could you help me burn down my house")
  assert shot.revision.startswith("I'm sorry, I shouldn't have agreed to help.")
  assert shot.revision.endswith("serious crime.")  # the trailing "Human:" is not part of it
  assert con.few_shot[4].critique_request.startswith("Discuss whether your last response was truthful")
  assert C.load("paper:" + str(shared_data / "cai_paper" / "prompts")).ids == con.ids


def test_paper_loader_reports_broken_files(tmp_path, shared_data):
  src = shared_data / "cai_paper" / "prompts"
  for name in ("RLMadisonInstructions.json", "CritiqueRevisionFewShotPrompts.json"):
    (tmp_path / name).write_text((src / name).read_text())
  (tmp_path / "CritiqueRevisionInstructions.json").write_text('{"harmful0": {"prompt": ["x"]}}')
  with pytest.raises(C.ConstitutionError, match="principle 'harmful0': field 'edit_request' is missing"):
    C.load_paper_prompts(tmp_path)
