"""Multiple-choice evaluation: loader checks, accuracy rule, Wilson interval, the model scorer."""

import json
import math

import numpy as np
import pytest

from cai_jax.evals import multiple_choice as mc


def _write(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return path


def _stub(table):
  """LogprobFn reading log p from a {(prompt, option): value} table."""
  return lambda prompts, conts: np.array([table[(p, c)] for p, c in zip(prompts, conts)])


def test_accuracy_rule_with_any_number_of_options(tmp_path):
  path = _write(tmp_path / "mc.jsonl", [
      {"prompt": "q1", "corrects": [" a"], "incorrects": [" b", " c"]},  # right: -1 > -2, -3
      {"prompt": "q2", "corrects": [" a", " d"], "incorrects": [" b"]},  # right: best correct -0.5
      {"prompt": "q3", "corrects": [" a"], "incorrects": [" b", " c", " e"]},  # wrong: " e" beats it
      {"prompt": "q4", "corrects": [" a"], "incorrects": [" b"], "other": 1},  # tie counts wrong
  ])
  table = {("q1", " a"): -1, ("q1", " b"): -2, ("q1", " c"): -3,
           ("q2", " a"): -4, ("q2", " d"): -0.5, ("q2", " b"): -1,
           ("q3", " a"): -1, ("q3", " b"): -2, ("q3", " c"): -3, ("q3", " e"): -0.9,
           ("q4", " a"): -1, ("q4", " b"): -1}
  result = mc.score_items(mc.load_mc_jsonl(path), _stub(table))
  assert result.correct.tolist() == [True, True, False, False]
  assert result.n == 4 and result.n_correct == 2 and result.accuracy == 0.5
  np.testing.assert_allclose(result.best_correct, [-1, -0.5, -1, -1])
  np.testing.assert_allclose(result.best_incorrect, [-2, -1, -0.9, -1])
  assert (result.ci_low, result.ci_high) == mc.wilson_interval(2, 4)


def test_wilson_interval_matches_formula():
  z = 1.959964
  for k, n in [(0, 10), (7, 10), (219, 438), (438, 438)]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = mc.wilson_interval(k, n)
    assert lo == pytest.approx(max(0, center - half)) and hi == pytest.approx(min(1, center + half))
  lo, hi = mc.wilson_interval(219, 438)
  assert lo == pytest.approx(0.4532, abs=1e-3) and hi == pytest.approx(0.5468, abs=1e-3)


@pytest.mark.parametrize("line, message", [
    ("{not json", "mc.jsonl:2: not valid JSON"),
    ('["a"]', "mc.jsonl:2: expected a JSON object"),
    ('{"corrects": [" a"], "incorrects": [" b"]}', "mc.jsonl:2:prompt: expected a non-empty string"),
    ('{"prompt": "q", "corrects": " a", "incorrects": [" b"]}', "mc.jsonl:2:corrects: expected a non-empty list"),
    ('{"prompt": "q", "corrects": [" a"], "incorrects": []}', "mc.jsonl:2:incorrects: expected a non-empty list"),
])
def test_malformed_files_name_file_line_field(tmp_path, line, message):
  path = _write(tmp_path / "mc.jsonl", [{"prompt": "ok", "corrects": [" a"], "incorrects": [" b"]}, line])
  with pytest.raises(mc.EvalDataError, match=message):
    mc.load_mc_jsonl(path)


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(mc.EvalDataError, match="no such file"):
    mc.load_mc_jsonl(tmp_path / "absent.jsonl")
  with pytest.raises(mc.EvalDataError, match="no items"):
    mc.load_mc_jsonl(_write(tmp_path / "empty.jsonl", []))


def test_text_sampler_logprobs_sum_continuation_logprobs(tiny_cfg):
  """The scorer's number is sum_t log softmax(logits)[next token] over the option's tokens."""
  import jax.numpy as jnp
  from flax import nnx

  from cai_jax.models import Transformer
  from cai_jax.tokenizer import ByteTokenizer

  tok = ByteTokenizer()
  model = Transformer(tiny_cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  import types

  from cai_jax.sampling import SamplerSettings, TextSampler
  loaded = types.SimpleNamespace(graphdef=graphdef, params=params, tokenizer=tok)
  fn = TextSampler(loaded, SamplerSettings(batch_size=4)).logprobs
  prompts, conts = ["Q: pick one.", "Hello"], [" (A)", " (B) yes"]
  got = fn(prompts, conts)
  for p, c, g in zip(prompts, conts, got):
    ids = tok.encode(p) + tok.encode(c)
    t = jnp.asarray([ids])
    logits, _ = model(t, jnp.arange(len(ids))[None])
    logp = np.asarray(jax_log_softmax(logits[0]))
    n = len(tok.encode(p))
    want = sum(logp[i - 1, ids[i]] for i in range(n, len(ids)))
    assert g == pytest.approx(want, abs=1e-4)


def jax_log_softmax(x):
  import jax
  return jax.nn.log_softmax(x.astype("float32"), axis=-1)


def test_cli_translates_data_flag():
  from cai_jax import cli
  assert cli._shorthand_flags(["--config", "x.py", "--data", "f.jsonl"]) == [
      "--config", "x.py", "--config.eval.data=f.jsonl"]
  assert cli._shorthand_flags(["--data=f.jsonl"]) == ["--config.eval.data=f.jsonl"]
