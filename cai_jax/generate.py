"""Stage `generate`: one prompt (config.generate.prompt) in, the answer on stdout.

  python -m cai_jax generate --config experiments/tiny.py --config.generate.prompt="Hi"
"""

from __future__ import annotations

import jax

from cai_jax import sampling, sharding


def answer(model, prompt: str, sampler_config, seed: int = 0, mesh=None) -> str:
  """The model's reply to one user message, sampled with the `sampler` settings."""
  tok = model.tokenizer
  ids = tok.encode(model.chat.format([{"role": "user", "content": prompt}]))
  out = sampling.generate(model.graphdef, model.params, [ids], rng=jax.random.key(seed),
                          max_new_tokens=sampler_config.max_new_tokens,
                          temperature=sampler_config.temperature, top_k=sampler_config.top_k,
                          top_p=sampler_config.top_p, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                          mesh=mesh, max_prompt_len=sampler_config.max_prompt_len)
  stops = set(tok.stop_ids)
  return tok.decode([t for t in out.row(0) if t not in stops], skip_special=True).strip()


def run(config) -> dict:
  from cai_jax.models.load import load_model
  mesh = sharding.make_mesh(dict(config.mesh))
  model = load_model(config.model, mesh, rules="sample")
  text = answer(model, config.generate.prompt, config.sampler, config.seed, mesh)
  print(text)
  return {"prompt": config.generate.prompt, "answer": text}
