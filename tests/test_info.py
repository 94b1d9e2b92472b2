"""Stage `info` on the tiny random model: its top-5 equals a direct softmax of the logits."""

import jax.numpy as jnp
import numpy as np


def test_info_stage_reports_top5_of_the_model(capsys):
  from cai_jax.cli import load_config
  from cai_jax.models.load import load_model
  from cai_jax.stages import common, info

  config = load_config(["--config=experiments/tiny.py", "--config.mesh.data=2",
                        "--config.mesh.tensor=4"])
  out = info.run(config)
  printed = capsys.readouterr().out
  assert "model: random:tiny" in printed and f"parameters {out['num_params']:,}" in printed

  loaded = load_model(common.model_spec(config))  # same seed -> same weights, unsharded
  ids = out["prompt_ids"]
  assert ids == loaded.tokenizer.encode(loaded.chat.format([{"role": "user", "content": info.PROMPT}]))
  logits, _ = loaded.module()(jnp.asarray([ids]), jnp.arange(len(ids))[None])
  p = np.asarray(jnp.exp(logits[0, -1] - jnp.max(logits[0, -1])), np.float64)
  p /= p.sum()
  want = np.argsort(-p)[:5]
  assert [t for t, _, _ in out["top5"]] == want.tolist()
  np.testing.assert_allclose([q for _, _, q in out["top5"]], p[want], rtol=1e-4)
  assert out["num_params"] == loaded.cfg.num_params
