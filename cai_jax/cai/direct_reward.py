"""Direct AI reward for PPO (d-RLAIF, Lee et al. 2023): the feedback model scores the
policy's answers during RL, with no reward model trained in between.

Each rollout answer is compared with a *baseline* answer to the same prompt -- the frozen
starting policy's greedy answer, computed once per prompt and kept -- through the same
multiple-choice feedback prompt as the `feedback` stage (cai/labels.py). The comparison
is asked in both orders (rollout answer as (A), then as (B)) and averaged, which cancels
the feedback model's bias toward a letter, and over k principles drawn per prompt. The
reward is

    r = P(rollout answer is the better one) - 1/2       in [-1/2, 1/2],

zero when the feedback model cannot tell the answer from the baseline's. Lee et al.
score a single answer on a 1-10 scale; a pairwise score against a fixed baseline keeps
the feedback prompt (and its calibration) identical to the one that labels the reward
model's data, so PPO with a reward model and PPO with the direct reward differ in the
reward model only -- the comparison the ablation asks for.

`DirectAIReward` is a PPO `reward_fn(tokens [B, L], mask [B, L]) -> [B]`: it finds each
row's prompt from its leading tokens (the encoded prompts are given) and decodes the
masked response.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cai_jax.cai import labels


@dataclasses.dataclass(frozen=True)
class DirectRewardSettings:
  k_principles: int = 1  # principles averaged per comparison
  seed: int = 0  # principle draws: fixed per (seed, prompt), so a resumed run draws the same
  prefix: str = ""  # few-shot prefix of solved feedback examples


class DirectAIReward:
  """`reward_fn(tokens, mask)` scoring each answer against the baseline answer.

  prompts: encoded prompt token ids (as the rows start with them) -> prompt text.
  decode: response token ids -> text.
  baseline_fn: prompt texts -> the baseline's answers (called once per new prompt).
  questions_fn: (prompt text, rng, k) -> k feedback questions (the principles' wording).
  logprob_fn: (prompts, continuations) -> summed log-probs, the feedback model's.
  """

  def __init__(self, prompts: Mapping[tuple[int, ...], str], decode: Callable[[Sequence[int]], str],
               baseline_fn: Callable[[Sequence[str]], list[str]],
               questions_fn: Callable[[str, np.random.Generator, int], Sequence[str]],
               logprob_fn: labels.LogprobFn, settings: DirectRewardSettings = DirectRewardSettings()):
    if not prompts:
      raise ValueError("DirectAIReward: no prompts")
    self.prompts = {tuple(int(t) for t in k): v for k, v in prompts.items()}
    self.lengths = sorted({len(k) for k in self.prompts}, reverse=True)
    self.decode, self.baseline_fn, self.questions_fn = decode, baseline_fn, questions_fn
    self.logprob_fn, self.settings = logprob_fn, settings
    self.baseline: dict[str, str] = {}
    # Both orders are always asked: the point of the pairwise form is an unbiased label.
    self._label_settings = labels.FeedbackSettings(k_principles=settings.k_principles, swap=True,
                                                   seed=settings.seed)

  def prompt_of(self, row: np.ndarray, response_start: int) -> str:
    """The prompt text a rollout row starts with (longest encoded prompt that matches)."""
    if response_start > 0:
      key = tuple(int(t) for t in row[:response_start])
      if key in self.prompts:
        return self.prompts[key]
    for n in self.lengths:  # an empty response has no mask to mark the prompt's end
      key = tuple(int(t) for t in row[:n])
      if key in self.prompts:
        return self.prompts[key]
    raise KeyError("rollout row does not start with any of the encoded prompts")

  def questions(self, prompt: str) -> list[str]:
    rng = np.random.default_rng([self.settings.seed, zlib.crc32(prompt.encode())])
    return list(self.questions_fn(prompt, rng, self.settings.k_principles))

  def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    starts = np.where(mask.any(axis=1), mask.argmax(axis=1), 0)
    prompts = [self.prompt_of(tokens[i], int(starts[i])) for i in range(len(tokens))]
    answers = [self.decode(tokens[i][mask[i]]).strip() for i in range(len(tokens))]
    new = list(dict.fromkeys(p for p in prompts if p not in self.baseline))
    if new:
      self.baseline.update(zip(new, self.baseline_fn(new)))
    items = [(f"Human: {p}", a, self.baseline[p]) for p, a in zip(prompts, answers)]
    p_better = labels.label_pairs(items, [self.questions(p) for p in prompts], self.logprob_fn,
                                  self._label_settings, self.settings.prefix)
    return np.asarray(p_better, np.float32) - np.float32(0.5)
