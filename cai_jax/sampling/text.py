"""The text-level sampler: chat messages (or raw text) in, strings out.

Every caller that wants a model's words goes through `TextSampler` (SL-CAI's
critique and revision rounds, AI feedback, the `generate` stage, the
chain-of-thought judge, PPO's prompt encoding), so "format with the chat
template -> encode -> generate -> drop stop ids -> decode" is written once:

    sampler = TextSampler(loaded_model, SamplerSettings(temperature=0.7), mesh=mesh, seed=0)
    answers = sampler.chat([[{"role": "user", "content": "Hi"}]])
    scores = sampler.logprobs(["The answer is:"], [" (A)"])   # summed log p per pair

Randomness: a call uses `fold_in(key(seed), step)` when `step` is given (callers
number their calls, e.g. SL-CAI's phases), else `key(seed)` itself; within a
call, row i is seeded by `row_ids[i]` (see engine.py), so a prompt's sample does
not depend on batching.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cai_jax.sampling import engine

log = logging.getLogger(__name__)

Messages = Sequence[dict]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How to sample: token selection, lengths and rows per compiled call."""

  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1.0 = off
  max_new_tokens: int = 128
  max_prompt_len: int = 512  # longer prompts keep their last tokens
  batch_size: int = 8


class TextSampler:
  """One model's text interface. `model` has graphdef, params, tokenizer and chat
  (a `models.load.LoadedModel`)."""

  def __init__(self, model: Any, settings: SamplerSettings = SamplerSettings(), *, mesh=None,
               seed: int = 0):
    self.model, self.settings, self.mesh = model, settings, mesh
    self.key = jax.random.key(seed)

  @property
  def source(self) -> str:
    return getattr(self.model, "source", "?")

  def encode_chat(self, messages: Messages) -> list[int]:
    """Token ids of a conversation in the model's chat template, awaiting the assistant's turn."""
    return self.model.tokenizer.encode(self.model.chat.format(list(messages)))

  def sample_ids(self, prompts: Sequence[Sequence[int]], *, step: int | None = None,
                 row_ids: Sequence[int] | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
    """Decoded continuations of token-id prompts (stop tokens dropped, whitespace stripped)."""
    tok, s = self.model.tokenizer, self.settings
    rng = self.key if step is None else jax.random.fold_in(self.key, step)
    out = engine.generate(self.model.graphdef, self.model.params, prompts, rng=rng,
                          max_new_tokens=max_new_tokens or s.max_new_tokens,
                          temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                          stop_ids=tok.stop_ids, pad_id=tok.pad_id, mesh=self.mesh,
                          max_prompt_len=s.max_prompt_len, batch_size=s.batch_size,
                          row_ids=row_ids)
    stops = set(tok.stop_ids)
    return [tok.decode([t for t in out.row(i) if t not in stops], skip_special=True).strip()
            for i in range(len(prompts))]

  def chat(self, conversations: Sequence[Messages], **kwargs) -> list[str]:
    """The assistant's next turn for each conversation (keywords as in `sample_ids`)."""
    return self.sample_ids([self.encode_chat(c) for c in conversations], **kwargs)

  def complete(self, texts: Sequence[str], **kwargs) -> list[str]:
    """Raw-text continuations, no chat template (keywords as in `sample_ids`)."""
    return self.sample_ids([self.model.tokenizer.encode(t) for t in texts], **kwargs)

  def logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """Summed log p(continuation | prompt) per pair, float64 [N]; prompt and continuation
    are tokenized separately. Prompts over max_prompt_len tokens keep their last ones."""
    tok, limit = self.model.tokenizer, self.settings.max_prompt_len
    cache: dict[str, list[int]] = {}
    p_ids = []
    for p in prompts:
      if p not in cache:
        ids = tok.encode(p)
        if len(ids) > limit:
          log.warning("prompt of %d tokens cut to its last %d", len(ids), limit)
          ids = ids[-limit:]
        cache[p] = ids
      p_ids.append(cache[p])
    c_ids = [tok.encode(c) for c in continuations]
    out = engine.score_continuations(self.model.graphdef, self.model.params, p_ids, c_ids,
                                     pad_id=tok.pad_id, mesh=self.mesh,
                                     batch_size=self.settings.batch_size)
    return np.asarray([float(np.sum(x)) for x in out], np.float64)
