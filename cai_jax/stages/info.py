"""Stage `info`: what a config's model is, and a first look at what it predicts.

  python -m cai_jax info --config experiments/embedded.py

Prints the model's shape and parameter count, where the weights came from, a
chat prompt and its token ids, and the model's five most likely next tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.stages import common

PROMPT = "What is the capital of France?"


def next_token_top_k(loaded, ids: list[int], k: int = 5) -> list[tuple[int, str, float]]:
  """The k most likely next tokens after ids: (id, text, probability), most likely first."""
  tokens = jnp.asarray([ids], jnp.int32)
  positions = jnp.arange(len(ids), dtype=jnp.int32)[None]

  @jax.jit
  def last_logits(params):
    from flax import nnx
    logits, _ = nnx.merge(loaded.graphdef, params)(tokens, positions)
    return logits[0, -1]  # [V]

  logits = np.asarray(last_logits(loaded.params), np.float64)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  top = np.argsort(-probs)[:k]
  return [(int(t), loaded.tokenizer.decode([int(t)], skip_special=False), float(probs[t])) for t in top]


def run(config) -> dict:
  """Loads config.model and prints its summary; returns the same facts as a dict."""
  mesh = common.mesh(config)
  loaded = common.load(config, mesh, rules="sample")
  cfg, tok = loaded.cfg, loaded.tokenizer
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(loaded.params))
  text = loaded.chat.format([{"role": "user", "content": PROMPT}])
  ids = tok.encode(text)
  top = next_token_top_k(loaded, ids)
  print(f"model: {loaded.source}")
  print(f"  layers {cfg.n_layers}, d_model {cfg.d_model}, heads {cfg.n_heads} (kv {cfg.n_kv_heads}) x "
        f"{cfg.head_dim}, mlp {cfg.mlp_dim}, vocab {cfg.vocab_size}, rope theta {cfg.rope_theta:g}, "
        f"tied embeddings {cfg.tie_embeddings}")
  print(f"  parameters {n_params:,} ({cfg.param_dtype}; compute {cfg.dtype}); mesh {dict(mesh.shape)}")
  print(f"tokenizer: {type(tok).__name__}, vocab {tok.vocab_size}, eos {tok.eos_id}, pad {tok.pad_id}, "
        f"stop ids {list(tok.stop_ids)}")
  print(f"chat prompt ({loaded.chat.name}, {len(ids)} tokens): {text!r}")
  print(f"token ids: {ids}")
  print("next-token top-5:")
  for t, piece, p in top:
    print(f"  {p:7.3f}  {t:6d}  {piece!r}")
  return {"source": loaded.source, "num_params": n_params, "prompt_ids": ids,
          "top5": [(t, piece, p) for t, piece, p in top]}
