"""Models: the Llama-family transformer, its configs and scalar heads."""

from cai_jax.models.config import PRESETS, ModelConfig, get_model_config, to_dtype
from cai_jax.models.transformer import KVCache, ScalarHead, Transformer

__all__ = ["PRESETS", "KVCache", "ModelConfig", "ScalarHead", "Transformer", "get_model_config",
           "to_dtype"]
