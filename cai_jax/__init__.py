"""cai_jax: a JAX-native reimplementation of Constitutional AI."""

__version__ = "0.1.0"
