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
VOCAB = '[vocabulary.topics]\nweapons = "weapons"\nfiction = "stories"\n'


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
  assert len(con.principles) == len(base.principles) - 1 + 3  # one removed, three added


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
    "unknown-topic": (VOCAB + GOOD.replace('tags = ["x"]', 'topics = ["wepons"]\nstance = "forbid"'),
                      None, [r"bad\.toml", "principle 'b'", "field 'topics'", "did you mean 'weapons'"]),
    "topics-without-stance": (VOCAB + GOOD.replace('tags = ["x"]', 'topics = ["weapons"]'), None,
                              [r"bad\.toml", "principle 'b'", "field 'stance'", "forbid"]),
    "stance-without-topics": (GOOD.replace('tags = ["x"]', 'stance = "allow"'), None,
                              [r"bad\.toml", "principle 'b'", "field 'stance' needs field 'topics'"]),
    "bad-stance": (VOCAB + GOOD.replace('tags = ["x"]', 'topics = ["weapons"]\nstance = "maybe"'),
                   None, [r"bad\.toml", "principle 'b'", "field 'stance' is 'maybe'"]),
    "topic-declared-twice": (VOCAB + GOOD, '[vocabulary.topics]\nweapons = "again"\n',
                             [r"profile\.toml", "topic 'weapons' is already declared"]),
    "profile-weakens-universal": (
        VOCAB + GOOD.replace('critique = "c"\n', 'topics = ["weapons"]\nstance = "forbid"\ncritique = "c"\n', 1),
        '[[principle]]\nid = "loose"\ntopics = ["weapons"]\nstance = "caution"\ncritique = "c"\n'
        'revision = "r"\nfeedback = "f"\n',
        [r"profile\.toml: principle 'loose'", "field 'stance'", "weakens universal principle 'a'",
         r"bad\.toml"]),
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


# ----------------------------------------------------------------------------- topics, stances, provenance

PROFILES = REPO / "constitutions" / "profiles"
OUR_PROFILES = ("eu_healthcare", "us_financial", "children_education", "creative_writing")


def test_base_principles_declare_topics_stances_and_their_file():
  con = C.load_constitution(BASE)
  weapons = con.get("no-weapons-uplift")
  assert weapons.topics == ("weapons",) and weapons.stance == "forbid"
  assert weapons.layer == "base" and weapons.source == str(BASE)
  assert all(p.stance in C.STANCES and p.topics and p.rule for p in con.principles)
  assert {p.stance for p in con.tier("universal")} == {"forbid"}
  assert set(t for p in con.principles for t in p.topics) <= set(dict(con.topics))
  assert con.layers == (C.Layer("base", str(BASE), "base"),)


def _profile(tmp_path, name, body):
  path = tmp_path / f"{name}.toml"
  path.write_text(f'name = "{name}"\n' + body)
  return path


ORG = '''
[context]
organisation = "Acme Clinic"

[[override]]
id = "health-data-minimisation"
rule = "Acme's rule: never repeat a patient's health details back to them."

[[principle]]
id = "acme-opening-hours"
tier = "style"
critique = "c"
revision = "r"
feedback = "f"
'''


def test_profiles_stack_in_order_and_every_principle_keeps_its_layer_and_file(tmp_path):
  eu = PROFILES / "eu_healthcare.toml"
  org = _profile(tmp_path, "acme", ORG)
  con = C.load_constitution(BASE, profiles=[eu, org])
  assert con.name == "cai-jax-base+eu-healthcare+acme"
  assert [(l.name, l.source, l.kind) for l in con.layers] == [
      ("base", str(BASE), "base"), ("eu-healthcare", str(eu), "profile"), ("acme", str(org), "profile")]
  where = {p.id: (p.layer, p.source) for p in con.principles}
  assert where["avoid-harm"] == ("base", str(BASE))
  assert where["expert-topics-care"] == ("eu-healthcare", str(eu))  # overridden by the EU layer
  assert where["no-remote-diagnosis"] == ("eu-healthcare", str(eu))  # added by it
  assert where["health-data-minimisation"] == ("acme", str(org))  # added by EU, changed by acme
  assert con.ids[-1] == "acme-opening-hours"  # later layers' principles come after earlier ones
  assert con.get("health-data-minimisation").stance == "forbid"  # fields not overridden are kept
  assert dict(con.context)["region"] == "EU" and dict(con.context)["organisation"] == "Acme Clinic"


def test_two_layers_changing_one_principle_is_a_conflict_naming_both_files(tmp_path):
  eu = PROFILES / "eu_healthcare.toml"
  org = _profile(tmp_path, "acme", ORG)
  con = C.load_constitution(BASE, profiles=[eu, org])
  [conflict] = con.conflicts
  assert conflict.kind == "same-principle" and conflict.principle == "health-data-minimisation"
  assert str(eu) in conflict.first and str(org) in conflict.second
  with pytest.raises(C.ConstitutionError) as err:
    C.load_constitution(BASE, profiles=[eu, org], on_conflict="error")
  assert str(eu) in str(err.value) and str(org) in str(err.value)


def test_changing_a_principle_an_earlier_layer_removed_names_both_files(tmp_path):
  first = _profile(tmp_path, "first", 'remove = ["not-preachy"]\n')
  second = _profile(tmp_path, "second", '[[override]]\nid = "not-preachy"\nrule = "x"\n')
  with pytest.raises(C.ConstitutionError) as err:
    C.load_constitution(BASE, profiles=[first, second])
  assert re.search(rf"{re.escape(str(second))}: principle 'not-preachy'.*{re.escape(str(first))}",
                   str(err.value))


def test_contradicting_stances_across_layers_are_reported_with_both_files(tmp_path):
  loose = _profile(tmp_path, "loose", '[[principle]]\nid = "gore-ok"\ntopics = ["mature-themes"]\n'
                   'stance = "allow"\ncritique = "c"\nrevision = "r"\nfeedback = "f"\n')
  con = C.load_constitution(BASE, profiles=[loose])
  [conflict] = con.conflicts
  assert conflict.kind == "contradicting-stances" and conflict.topic == "mature-themes"
  assert {conflict.principle, conflict.other} == {"age-appropriate", "gore-ok"}
  assert str(BASE) in conflict.message and str(loose) in conflict.message
  assert con.stance_on("mature-themes")[0] == "caution"  # the strictest stance applies


@pytest.mark.parametrize("body, action", [
    ('remove = ["respect-privacy"]\n', "removed"),
    ('[[override]]\nid = "respect-privacy"\nstance = "caution"\n', "overridden"),
    ('[[principle]]\nid = "open-records"\ntopics = ["personal-data"]\nstance = "allow"\n'
     'critique = "c"\nrevision = "r"\nfeedback = "f"\n', "weakens universal principle 'respect-privacy'"),
    ('[[override]]\nid = "respect-autonomy"\ntopics = ["personal-data"]\n',
     "weakens universal principle 'respect-privacy'"),  # an override can weaken one too
], ids=["remove", "override", "weaken-by-new-principle", "weaken-by-override"])
def test_a_profile_that_removes_overrides_or_weakens_a_universal_principle_is_refused(
    tmp_path, body, action):
  profile = _profile(tmp_path, "relaxing", body)
  with pytest.raises(C.ConstitutionError) as err:
    C.load_constitution(BASE, profiles=[PROFILES / "eu_healthcare.toml", profile])
  message = str(err.value)
  assert str(profile) in message and action in message and str(BASE) in message


@pytest.mark.parametrize("name", OUR_PROFILES)
def test_our_profiles_load_add_their_own_layer_and_keep_every_universal_principle(name):
  base = C.load_constitution(BASE)
  con = C.load_constitution(BASE, profiles=[C.profile_path(name)])
  assert con.tier("universal") == base.tier("universal")
  own = [p for p in con.principles if p.layer == con.layers[-1].name]
  assert len(own) >= 3 and all(p.source == str(PROFILES / f"{name}.toml") for p in own)
  assert con.conflicts == () and con.context


def test_creative_profile_legitimately_relaxes_a_contextual_stance_and_children_tighten_it():
  base = C.load_constitution(BASE)
  creative = C.load("", profiles=[C.profile_path("creative_writing")])
  children = C.load("", profiles=[C.profile_path("children_education")])
  assert base.stance_on("mature-themes")[0] == "caution"
  assert creative.stance_on("mature-themes")[0] == "allow"
  assert children.stance_on("mature-themes")[0] == "forbid"


def test_profile_names_resolve_to_the_profiles_folder_with_a_did_you_mean():
  assert C.profile_path("eu_healthcare") == PROFILES / "eu_healthcare.toml"
  assert C.profile_path("x/y.toml") == pathlib.Path("x/y.toml")
  with pytest.raises(C.ConstitutionError, match="did you mean 'us_financial'"):
    C.profile_path("us_finance")


# ----------------------------------------------------------------------------- how principles are drawn


def _three(weights=None):
  mk = lambda i, tier: C.Principle(id=f"p{i}", critique="c", revision="r", feedback="f", tier=tier)  # noqa: E731
  con = C.Constitution("t", (mk(0, "universal"), mk(1, "universal"), mk(2, "style")))
  return con.with_tier_weights(weights)


def test_uniform_sampling_draws_exactly_what_it_always_drew():
  con = C.load_constitution(BASE, profiles=[PROFILES / "eu_healthcare.toml"])
  reference = [con.principles[i] for i in np.random.default_rng(7).integers(0, len(con.principles), size=50)]
  assert con.sample(np.random.default_rng(7), 50) == reference
  assert np.allclose(con.draw_probabilities(), 1 / len(con.principles))


def test_tier_weights_split_evenly_within_a_tier_by_hand():
  # universal 1 over 2 principles, style 2 over 1, contextual absent: P = [1/6, 1/6, 2/3].
  assert np.allclose(_three({"universal": 1, "style": 2}).draw_probabilities(), [1 / 6, 1 / 6, 2 / 3])
  assert np.allclose(_three({"style": 0}).draw_probabilities(), [0.5, 0.5, 0.0])  # unnamed tiers: 1


def test_tiered_draws_match_their_weights_over_many_draws():
  con = C.load_constitution(BASE).with_tier_weights({"universal": 3, "contextual": 1, "style": 0})
  n = 40_000
  draws = con.sample(np.random.default_rng(0), n)
  assert draws == con.sample(np.random.default_rng(0), n)
  for tier, p_tier in (("universal", 0.75), ("contextual", 0.25), ("style", 0.0)):
    count = sum(d.tier == tier for d in draws)
    assert abs(count - n * p_tier) <= 4 * np.sqrt(n * p_tier * (1 - p_tier)), (tier, count)
  # Within a tier every principle is equally likely: chi-square over the universal ones.
  universal = con.tier("universal")
  counts = np.array([sum(d.id == p.id for d in draws) for p in universal])
  expected = counts.sum() / len(universal)
  chi2 = float(((counts - expected) ** 2 / expected).sum())
  assert chi2 < 26.1  # the 0.999 quantile of chi-square with 8 degrees of freedom


def test_weights_that_leave_nothing_to_draw_are_an_error():
  with pytest.raises(C.ConstitutionError, match="weight 0"):
    _three({"universal": 0, "style": 0})
  with pytest.raises(C.ConstitutionError, match="unknown tiers"):
    _three({"core": 1})


def test_subset_keeps_n_principles_in_file_order_fixed_by_its_seed():
  con = C.load_constitution(BASE)
  a, b = con.subset(6, seed=1), con.subset(6, seed=1)
  assert a.ids == b.ids and len(a.ids) == 6
  assert [i for i in con.ids if i in a.ids] == list(a.ids)
  assert con.subset(6, seed=2).ids != a.ids
  assert con.subset(-1, seed=0) is con
  with pytest.raises(C.ConstitutionError, match="has 20 principles"):
    con.subset(21, seed=0)


# ----------------------------------------------------------------------------- the config and the stages


def _config(*overrides):
  from cai_jax import cli
  return cli.load_config(["--config", str(REPO / "experiments" / "tiny.py"), *overrides])


def test_stages_take_the_constitution_section_unless_they_override_it():
  from cai_jax.stages import constitution as stage
  config = _config("--config.constitution.profiles=eu_healthcare,creative_writing",
                   "--config.feedback.profile=none", "--config.constitution.sampling=tiered",
                   "--config.constitution.tier_weights=style=0", "--config.constitution.n_principles=10")
  sl = stage.from_config(config, "sl_data")
  assert [l.name for l in sl.layers] == ["base", "eu-healthcare", "creative-writing"]
  assert len(sl.principles) == 10 and dict(sl.tier_weights)["style"] == 0.0
  fb = stage.from_config(config, "feedback")
  assert [l.name for l in fb.layers] == ["base"]


def test_config_rejects_bad_constitution_settings():
  for flag, message in (("--config.constitution.sampling=random", "constitution.sampling"),
                        ("--config.constitution.on_conflict=ignore", "constitution.on_conflict"),
                        ("--config.constitution.tier_weights=core=1", "constitution.tier_weights")):
    with pytest.raises(SystemExit, match=message):
      _config(flag)


def test_constitution_stage_prints_tiers_stances_and_provenance(capsys):
  from cai_jax.stages import constitution as stage
  summary = stage.run(_config("--config.constitution.profiles=creative_writing,children_education"))
  out = capsys.readouterr().out
  assert re.search(r"\nage-appropriate +contextual +forbid: mature-themes +0\.038 +children-education ", out)
  assert "constitutions/profiles/children_education.toml" in out and "CONFLICT (same-principle)" in out
  assert summary["n_principles"] == 26 and [l["name"] for l in summary["layers"]] == [
      "base", "creative-writing", "children-education"]
  assert summary["conflicts"][0]["kind"] == "same-principle"


def test_sl_data_rounds_and_feedback_records_carry_tier_and_provenance(tmp_path):
  import json
  from cai_jax.cai import labels, revision
  from cai_jax.data.prompts import Prompt
  con = C.load_constitution(BASE, profiles=[PROFILES / "eu_healthcare.toml"])
  echo = lambda convs, rows, phase: [f"answer {phase}"] * len(convs)  # noqa: E731
  [record] = revision.critique_and_revise(echo, con, [("red_team", Prompt("p1", "hi"))],
                                          revision.SLDataSettings(n_rounds=3, seed=0), "m", "fp")
  drawn = con.sample(np.random.default_rng([0, revision._row_id("p1")]), 3)
  assert [(r.principle, r.tier, r.layer, r.source) for r in record.rounds] == [
      (p.id, p.tier, p.layer, p.source) for p in drawn]
  out = tmp_path / "fb.jsonl"
  zero = lambda prompts, conts: np.zeros(len(prompts))  # noqa: E731
  labels.write_feedback([Prompt("q1", "hi")], lambda texts: [("a", "b")] * len(texts), con, zero,
                        out, labels.FeedbackSettings(k_principles=2, seed=0))
  rec = json.loads(out.read_text())
  assert rec["provenance"] == [f"{con.get(i).tier}:{con.get(i).layer}:{con.get(i).source}"
                               for i in rec["principles"]]


def test_fingerprints_hash_only_the_fields_that_shape_generated_text():
  # The same dict the records' fingerprints always hashed, so runs made before topics,
  # stances and provenance existed still resume.
  p = C.load_constitution(BASE, profiles=[PROFILES / "eu_healthcare.toml"]).get("expert-topics-care")
  assert p.content() == {"id": p.id, "critique": p.critique, "revision": p.revision,
                         "feedback": p.feedback, "tier": "contextual",
                         "tags": ["medical", "legal", "financial"]}
