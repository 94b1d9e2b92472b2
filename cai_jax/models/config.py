"""Model hyper-parameters and the named presets (tiny, smollm2_135m, llama 1B/8B)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str) -> Any:
  """Maps a dtype name from a config to a jnp dtype, with a clear error."""
  try:
    return _DTYPES[name]
  except KeyError:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Llama-family decoder-only transformer."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype
  remat: bool = False  # rematerialise each block in the backward pass

  def __post_init__(self):
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, field) <= 0:
        raise ValueError(f"ModelConfig.{field} must be positive, got {getattr(self, field)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"ModelConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
    to_dtype(self.param_dtype)
    to_dtype(self.dtype)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def num_params(self) -> int:
    attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    per_layer = attn + mlp + 2 * self.d_model
    emb = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.n_layers * per_layer + emb + self.d_model


PRESETS: dict[str, ModelConfig] = {
    # Tests: a few layers, d=64, GQA; vocab 264 = ByteTokenizer (bytes + 8 specials).
    "tiny": ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, mlp_dim=128, rope_theta=10_000.0),
    "smollm2_135m": ModelConfig(vocab_size=49_152, d_model=576, n_layers=30, n_heads=9,
                                n_kv_heads=3, head_dim=64, mlp_dim=1536, rope_theta=100_000.0),
    "llama3_2_1b": ModelConfig(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32,
                               n_kv_heads=8, head_dim=64, mlp_dim=8192, rope_theta=500_000.0),
    "llama3_8b": ModelConfig(vocab_size=128_256, d_model=4096, n_layers=32, n_heads=32,
                             n_kv_heads=8, head_dim=128, mlp_dim=14_336, rope_theta=500_000.0,
                             tie_embeddings=False),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
  """Returns a named preset, optionally with fields replaced."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
