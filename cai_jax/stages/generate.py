"""Stage `generate`: one prompt (config.generate.prompt) in, the answer on stdout.

  python -m cai_jax generate --config experiments/tiny.py --config.generate.prompt="Hi"
"""

from __future__ import annotations

from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def run(config) -> dict:
  mesh = common.mesh(config)
  model = common.load(config, mesh, rules="sample")
  sampler = TextSampler(model, common.sampler_settings(config), mesh=mesh, seed=config.seed)
  text = sampler.chat([[{"role": "user", "content": config.generate.prompt}]])[0]
  print(text)
  return {"prompt": config.generate.prompt, "answer": text}
