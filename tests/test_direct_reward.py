"""d-RLAIF: the feedback model's pairwise score against a baseline answer is PPO's reward."""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

from cai_jax.cai import labels
from cai_jax.cai.direct_reward import DirectAIReward, DirectRewardSettings

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = {(1, 2, 3): "first prompt", (4, 5): "second prompt"}
ANSWER_IDS = {7: "good answer", 8: "bad answer", 9: "so-so answer"}


def _decode(ids):
  return " ".join(ANSWER_IDS[int(i)] for i in ids)


def _quality(text: str) -> float:
  return {"good answer": 2.0, "so-so answer": 0.5, "bad answer": -1.0, "baseline": 0.0}[text]


def _judge(letter_bias: float):
  """A feedback model whose log-odds for (A) are quality(A) - quality(B) + letter_bias."""
  def logprob_fn(prompts, continuations):
    out = []
    for prompt, cont in zip(prompts, continuations):
      a = re.search(r"\(A\) (.*)\n", prompt).group(1)
      b = re.search(r"\(B\) (.*)\n", prompt).group(1)
      d = _quality(a) - _quality(b) + letter_bias
      out.append(d if cont == " (A)" else 0.0)
    return np.asarray(out)
  return logprob_fn


def _reward(letter_bias=0.0, calls=None):
  def baseline_fn(prompts):
    if calls is not None:
      calls.extend(prompts)
    return ["baseline"] * len(prompts)
  return DirectAIReward(PROMPTS, _decode, baseline_fn, lambda p, rng, k: ["Which is better?"] * k,
                        _judge(letter_bias), DirectRewardSettings(k_principles=2))


def _rows(rows):
  """(prompt ids, answer ids) -> right-padded tokens and the response mask, as PPO assembles."""
  length = 8
  tokens = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, (p, a) in enumerate(rows):
    tokens[i, :len(p) + len(a)] = list(p) + list(a)
    mask[i, len(p):len(p) + len(a)] = True
  return tokens, mask


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_reward_is_the_swap_averaged_preference_over_the_baseline_minus_a_half():
  tokens, mask = _rows([((1, 2, 3), (7,)), ((4, 5), (8,)), ((1, 2, 3), (9,))])
  got = _reward()(tokens, mask)
  expected = [_sigmoid(q) - 0.5 for q in (2.0, -1.0, 0.5)]  # quality(answer) - quality(baseline)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_asking_in_both_orders_cancels_a_bias_toward_a_letter():
  tokens, mask = _rows([((1, 2, 3), (7,)), ((4, 5), (8,))])
  # With a bias b, p(A first) = s(d + b) and 1 - p(B first) = 1 - s(-d + b); their mean is
  # the reward's; for b = 0 it is s(d). The bias moves it, but symmetrically around 1/2 ...
  biased = _reward(letter_bias=3.0)(tokens, mask)
  d = np.array([2.0, -1.0])
  np.testing.assert_allclose(biased, 0.5 * (_sigmoid(d + 3) + 1 - _sigmoid(-d + 3)) - 0.5, rtol=1e-6)
  # ... so an answer equal in quality to the baseline scores exactly 0 whatever the bias.
  tie = DirectAIReward(PROMPTS, lambda ids: "baseline", lambda ps: ["baseline"] * len(ps),
                       lambda p, rng, k: ["q"] * k, _judge(3.0))
  assert tie(*_rows([((1, 2, 3), (7,))]))[0] == pytest.approx(0.0, abs=1e-7)


def test_the_baseline_answer_is_computed_once_per_prompt():
  calls = []
  reward = _reward(calls=calls)
  tokens, mask = _rows([((1, 2, 3), (7,)), ((1, 2, 3), (8,)), ((4, 5), (9,))])
  reward(tokens, mask)
  reward(tokens, mask)
  assert calls == ["first prompt", "second prompt"]


def test_an_empty_answer_still_finds_its_prompt():
  tokens, mask = _rows([((4, 5), ())])
  reward = DirectAIReward(PROMPTS, lambda ids: "bad answer", lambda ps: ["baseline"] * len(ps),
                          lambda p, rng, k: ["q"] * k, _judge(0.0))
  np.testing.assert_allclose(reward(tokens, mask), [_sigmoid(-1.0) - 0.5], rtol=1e-6)


def test_principles_are_drawn_per_prompt_with_a_fixed_seed():
  seen = []

  def questions(prompt, rng, k):
    seen.append((prompt, int(rng.integers(1 << 30))))
    return ["q"] * k
  reward = DirectAIReward(PROMPTS, _decode, lambda ps: ["baseline"] * len(ps), questions, _judge(0.0))
  tokens, mask = _rows([((1, 2, 3), (7,))])
  reward(tokens, mask)
  reward(tokens, mask)
  assert seen[0] == seen[1]


def test_the_label_prompt_is_the_feedback_stages_prompt():
  prompts = []

  def logprob_fn(ps, conts):
    prompts.extend(ps)
    return np.zeros(len(ps))
  reward = DirectAIReward(PROMPTS, _decode, lambda ps: ["baseline"] * len(ps),
                          lambda p, rng, k: ["Which is kinder?"] * k, logprob_fn)
  reward(*_rows([((1, 2, 3), (7,))]))
  assert prompts[0] == labels.feedback_prompt("Human: first prompt", "Which is kinder?",
                                              "good answer", "baseline")
  assert prompts[2] == labels.feedback_prompt("Human: first prompt", "Which is kinder?",
                                              "baseline", "good answer")


def test_ppo_stage_trains_with_the_direct_reward_on_the_tiny_model(tmp_path):
  from cai_jax import config as config_lib
  from cai_jax.stages import ppo as ppo_stage

  spec = importlib.util.spec_from_file_location("rl_cai", REPO / "experiments" / "rl_cai.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config_lib.apply_overrides(config, {"workdir": str(tmp_path), "ppo.reward": "feedback",
                                      "ppo.num_steps": 2, "ppo.max_new_tokens": 8,
                                      "ppo.checkpoint_every": 0, "feedback.n_few_shot": 0})
  summary = ppo_stage.run(config_lib.validate(config))
  assert summary["steps"] == 2
  records = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").open()]
  rewards = [r["reward_mean"] for r in records if "reward_mean" in r]
  assert len(rewards) == 2 and all(-0.5 <= r <= 0.5 for r in rewards)


def test_an_unknown_reward_is_a_config_error():
  from cai_jax import config as config_lib
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"ppo.reward": "feedbak"})
  with pytest.raises(ValueError, match="ppo.reward: 'feedbak'"):
    config_lib.validate(config)
