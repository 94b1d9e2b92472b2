"""Sampling: the jitted engine, token selection, and the text-level sampler.

  engine.py     prefill + KV cache + `lax.while_loop` decode over token ids;
                continuation scoring (log p of given tokens)
  selection.py  per-step token choice: greedy, temperature, top-k, top-p
  text.py       `TextSampler`: chat messages / raw text in, strings out; the one
                door to generation and scoring for every stage

`from cai_jax import sampling; sampling.generate(...)` reaches the engine.
"""

from cai_jax.sampling.engine import (DecodeState, SampleOutput, generate, length_bucket, next_pow2,
                                     release_prepared, score_continuations,
                                     sequence_logprobs)
from cai_jax.sampling.text import SamplerSettings, TextSampler

__all__ = ["DecodeState", "SampleOutput", "SamplerSettings", "TextSampler", "generate",
           "length_bucket", "next_pow2", "release_prepared", "score_continuations", "sequence_logprobs"]
