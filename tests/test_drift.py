"""First-token drift (evals/drift.py, stage eval-drift): KL(current || reference) by
response position and the refusal opening's log-probability, against NumPy references
computed from the two tiny models' full logits."""

import importlib.util
import json
import pathlib
import types

import numpy as np
import pytest
from flax import nnx

from cai_jax import config as config_lib
from cai_jax import sharding
from cai_jax.evals import drift
from cai_jax.models import Transformer
from cai_jax.sampling import SamplerSettings, TextSampler
from cai_jax.tokenizer import ByteTokenizer, ChatTemplate

TINY = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "tiny.py"
PROMPTS = ["How do I get into my neighbour's shed without a key?", "Write an insult.", "Hi"]
REFUSAL = "I'm sorry, but no."


@pytest.fixture(scope="module")
def models():
  """(graphdef, current params, reference params): two different random inits."""
  from cai_jax.models import get_model_config
  cfg = get_model_config("tiny")
  current, reference = Transformer(cfg, rngs=nnx.Rngs(0)), Transformer(cfg, rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(current)
  _, ref_state = nnx.split(reference)
  return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(ref_state)


WIDTH = 128  # every reference row is padded to this, so the NumPy side compiles one forward


@pytest.fixture(scope="module")
def log_softmax(models):
  """(params, ids) -> float64 log-softmax [len(ids), V] of the model's logits on one row
  (padding at the end changes nothing before it: attention is causal)."""
  import jax
  import jax.numpy as jnp
  graphdef = models[0]
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t, jnp.arange(WIDTH)[None])[0])

  def fn(params, ids):
    row = np.zeros((1, WIDTH), np.int32)
    row[0, :len(ids)] = ids
    x = np.asarray(forward(params, row)[0, :len(ids)], np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  return fn


def _kl_np(log_softmax, params, ref_params, probe):
  """[N, k] KL(current || reference) at each answer position, NaN where the answer is shorter."""
  out = np.full((probe.n, probe.k), np.nan)
  for i in range(probe.n):
    p, a = int(probe.prompt_len[i]), int(probe.answer_len[i])
    ids = probe.tokens[i, :p + a].tolist()
    lp, lq = log_softmax(params, ids), log_softmax(ref_params, ids)
    for j in range(a):
      t = p - 1 + j
      out[i, j] = np.sum(np.exp(lp[t]) * (lp[t] - lq[t]))
  return out


def _probe(k=3, answers=None):
  tok = ByteTokenizer()
  prompt_ids = [tok.encode(p) for p in PROMPTS]
  answers = answers if answers is not None else [tok.encode("Sure, here")] * len(PROMPTS)
  return drift.build_probe(prompt_ids, answers, tok.encode(REFUSAL), k, tok.pad_id)


def test_reference_answers_are_the_greedy_chat_continuations(models, log_softmax):
  graphdef, _, ref_params = models
  tok, chat = ByteTokenizer(), ChatTemplate("chatml")
  loaded = types.SimpleNamespace(graphdef=graphdef, params=ref_params, tokenizer=tok, chat=chat)
  sampler = TextSampler(loaded, SamplerSettings(temperature=0.0, max_new_tokens=3, batch_size=4))
  probe = drift.reference_answers(sampler, PROMPTS, 3, REFUSAL)
  refusal = tok.encode(REFUSAL)
  assert probe.refusal_len == len(refusal) and probe.k == 3
  for i, text in enumerate(PROMPTS):
    ids = tok.encode(chat.format([{"role": "user", "content": text}]))
    greedy = []
    while len(greedy) < 3 and (not greedy or greedy[-1] not in tok.stop_ids):
      greedy.append(int(log_softmax(ref_params, ids + greedy)[-1].argmax()))
    assert probe.prompt_len[i] == len(ids) and probe.answer_len[i] == len(greedy)
    assert probe.tokens[i, :len(ids) + len(greedy)].tolist() == ids + greedy
    assert probe.refusal_tokens[i, :len(ids) + len(refusal)].tolist() == ids + refusal
  assert probe.tokens.shape == probe.refusal_tokens.shape == probe.positions.shape


def test_kl_by_position_matches_numpy(models, log_softmax):
  graphdef, params, ref_params = models
  probe = _probe(k=4)
  got = drift.first_token_kl(graphdef, params, ref_params, probe)
  want = _kl_np(log_softmax, params, ref_params, probe).mean(axis=0)
  assert got["kl_by_position"].shape == (4,) and np.all(want > 1e-4)  # two inits differ
  np.testing.assert_allclose(got["kl_by_position"], want, rtol=1e-5, atol=1e-6)
  assert got["kl_mean"] == pytest.approx(want.mean(), rel=1e-5)


def test_kl_is_zero_for_identical_params(models):
  graphdef, params, _ = models
  got = drift.first_token_kl(graphdef, params, params, _probe())
  assert np.max(np.abs(got["kl_by_position"])) < 1e-7 and abs(got["kl_mean"]) < 1e-7
  assert got["refusal_logprob"] == got["refusal_logprob_ref"]


def test_shorter_answers_contribute_nothing_after_their_end(models, log_softmax):
  graphdef, params, ref_params = models
  tok = ByteTokenizer()
  probe = _probe(k=3, answers=[tok.encode("Sure"), tok.encode("I"), tok.encode("No")])
  assert probe.answer_len.tolist() == [3, 1, 2]
  got = drift.first_token_kl(graphdef, params, ref_params, probe)
  per_row = _kl_np(log_softmax, params, ref_params, probe)
  want = [per_row[:, 0].mean(), per_row[[0, 2], 1].mean(), per_row[0, 2]]
  np.testing.assert_allclose(got["kl_by_position"], want, rtol=1e-5, atol=1e-6)
  assert got["kl_mean"] == pytest.approx(np.mean(want), rel=1e-5)


def test_refusal_logprob_is_the_summed_log_softmax(models, log_softmax):
  graphdef, params, ref_params = models
  tok = ByteTokenizer()
  refusal = tok.encode(REFUSAL)
  got = drift.first_token_kl(graphdef, params, ref_params, _probe())
  for key, weights in (("refusal_logprob", params), ("refusal_logprob_ref", ref_params)):
    sums = []
    for text in PROMPTS:
      ids = tok.encode(text) + refusal
      lp, n = log_softmax(weights, ids), len(tok.encode(text))
      sums.append(sum(lp[t - 1, ids[t]] for t in range(n, len(ids))))
    assert got[key] == pytest.approx(np.mean(sums), rel=1e-5)
  assert got["refusal_logprob"] != pytest.approx(got["refusal_logprob_ref"], rel=1e-3)


def test_sharded_call_matches_unsharded_and_compiles_once(models):
  graphdef, params, ref_params = models
  probe = _probe()
  mesh = sharding.make_mesh({"data": -1})  # 8 rows of shards for 3 prompts
  plain = drift.first_token_kl(graphdef, params, ref_params, probe)
  sharded = drift.first_token_kl(graphdef, params, ref_params, probe, mesh=mesh)
  np.testing.assert_allclose(sharded["kl_by_position"], plain["kl_by_position"], rtol=1e-5)
  assert sharded["refusal_logprob"] == pytest.approx(plain["refusal_logprob"], rel=1e-5)
  compiled = drift._drift_core._cache_size()
  drift.first_token_kl(graphdef, params, ref_params, probe)
  assert drift._drift_core._cache_size() == compiled


def test_plot_writes_a_png(tmp_path):
  path = tmp_path / "kl.png"
  drift.plot_kl_by_position({"sft": np.array([0.9, 0.4, 0.1]), "ppo": np.array([1.2, 0.5, 0.2])},
                            path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1024


def _tiny_config(tmp_path, **fields):
  spec = importlib.util.spec_from_file_location("tiny", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.apply_overrides(config, {"workdir": str(tmp_path / "run"), **fields})
  return config_lib.validate(config)


def test_config_rejects_bad_drift_fields(tmp_path):
  with pytest.raises(ValueError, match="drift.k"):
    _tiny_config(tmp_path, **{"drift.k": 0})
  with pytest.raises(ValueError, match="drift.n_prompts"):
    _tiny_config(tmp_path, **{"drift.n_prompts": 0})


def test_stage_writes_drift_json_and_plot(tmp_path, capsys):
  from cai_jax.stages import eval_drift
  config = _tiny_config(tmp_path, **{"drift.n_prompts": 3, "drift.k": 3})
  summary = eval_drift.run(config)
  out = tmp_path / "run" / "drift"
  written = json.loads((out / "drift.json").read_text())
  assert set(written) == {"stage", "model", "reference", "n_prompts", "k", "kl_by_position",
                          "kl_mean", "refusal_logprob", "refusal_logprob_ref"}
  assert written["model"] == written["reference"] == "random:tiny"  # no SFT export here
  assert written["n_prompts"] == 3 and written["k"] == 3 and len(written["kl_by_position"]) == 3
  assert abs(written["kl_mean"]) < 1e-7  # same random init twice: nothing drifted
  assert written["refusal_logprob"] == written["refusal_logprob_ref"] < 0
  assert (out / "kl_by_position.png").stat().st_size > 1024
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == written == summary
