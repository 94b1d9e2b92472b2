"""Weights in and out: GGUF import, HF safetensors import/export, and their errors."""

import gc
import json
import weakref

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cai_jax import weights
from cai_jax.config import base_config
from cai_jax.models import Transformer, get_model_config


def random_params(cfg, seed=0):
  """A tiny model's params as np.float32 (norm scales randomised too, so a swap would show)."""
  _, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed)
  out = {k: np.asarray(v, np.float32) for k, v in params.items() if k != "layers"}
  out["layers"] = {k: np.asarray(v, np.float32) for k, v in params["layers"].items()}
  out["final_norm"] = 1 + 0.1 * rng.standard_normal(out["final_norm"].shape).astype(np.float32)
  for k in ("attn_norm", "mlp_norm"):
    out["layers"][k] = 1 + 0.1 * rng.standard_normal(out["layers"][k].shape).astype(np.float32)
  return out


def llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf's q/k permutation, written out from its definition. w: [out, in]."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path, cfg, params, arch="llama", quant=None):
  """Writes params as llama.cpp would: (out, in) matrices, q/k rows permuted; quant on the MLP."""
  import gguf
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.n_layers)
  w.add_context_length(256)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.mlp_dim)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_tensor("token_embd.weight", params["embed"])
  w.add_tensor("output_norm.weight", params["final_norm"])
  if not cfg.tie_embeddings:
    w.add_tensor("output.weight", np.ascontiguousarray(params["lm_head"].T))
  names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "w_gate": "ffn_gate",
           "w_up": "ffn_up", "w_down": "ffn_down"}
  lp = params["layers"]
  for i in range(cfg.n_layers):
    w.add_tensor(f"blk.{i}.attn_norm.weight", lp["attn_norm"][i])
    w.add_tensor(f"blk.{i}.ffn_norm.weight", lp["mlp_norm"][i])
    for k, name in names.items():
      m = np.ascontiguousarray(lp[k][i].T)  # (out, in)
      if k == "wq":
        m = llama_cpp_permute(m, cfg.n_heads)
      if k == "wk":
        m = llama_cpp_permute(m, cfg.n_kv_heads)
      if quant is not None and k.startswith("w_"):
        w.add_tensor(f"blk.{i}.{name}.weight", gguf.quants.quantize(m, quant), raw_dtype=quant)
      else:
        w.add_tensor(f"blk.{i}.{name}.weight", m)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def logits_of(cfg, params, tokens):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, params)
  tokens = jnp.asarray(tokens)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(model(tokens, positions)[0])


def assert_same_params(a, b, atol=0.0):
  assert set(a) == set(b) and set(a["layers"]) == set(b["layers"])
  for k in a:
    if k != "layers":
      np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)
  for k in a["layers"]:
    np.testing.assert_allclose(a["layers"][k], b["layers"][k], atol=atol, rtol=0, err_msg=k)


TOKENS = np.array([[3, 17, 200, 45, 9, 120, 7, 64], [260, 1, 2, 3, 4, 5, 6, 7]])


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_import_undoes_llama_cpp_layout(tmp_path, tied):
  cfg = get_model_config("tiny", tie_embeddings=tied)
  params = random_params(cfg)
  path = write_llama_gguf(tmp_path / "m.gguf", cfg, params)
  got_cfg, got = weights.load_gguf(path)
  assert got_cfg.replace(norm_eps=cfg.norm_eps) == cfg  # eps goes through float32 in the file
  assert got_cfg.norm_eps == pytest.approx(cfg.norm_eps)
  assert_same_params(got, params)  # f32 in, f32 out: exact
  np.testing.assert_array_equal(logits_of(got_cfg, got, TOKENS), logits_of(cfg, params, TOKENS))


def test_gguf_import_is_cached_per_file_version(tmp_path):
  cfg = get_model_config("tiny")
  params = random_params(cfg)
  path = write_llama_gguf(tmp_path / "m.gguf", cfg, params)
  _, a = weights.load_gguf(path)
  _, b = weights.load_gguf(path)
  assert a["layers"]["wq"] is b["layers"]["wq"] and not a["layers"]["wq"].flags.writeable
  a["embed"] = None  # the dicts are the caller's own
  assert b["embed"] is not None
  params["layers"]["wq"] = params["layers"]["wq"] * 2  # a rewritten file is read again
  write_llama_gguf(path, cfg, params)
  _, c = weights.load_gguf(path)
  np.testing.assert_array_equal(c["layers"]["wq"], params["layers"]["wq"])


def test_gguf_import_is_freed_once_its_arrays_are_dropped(tmp_path):
  cfg = get_model_config("tiny")
  path = write_llama_gguf(tmp_path / "m.gguf", cfg, random_params(cfg))
  _, params = weights.load_gguf(path)
  alive = weakref.ref(params["layers"]["w_up"])
  del params
  gc.collect()
  assert alive() is None  # no process-wide cache keeps the dequantised weights


def test_gguf_quantized_tensors_are_dequantized(tmp_path):
  import gguf
  cfg = get_model_config("tiny")
  params = random_params(cfg, seed=1)
  path = write_llama_gguf(tmp_path / "q.gguf", cfg, params, quant=gguf.GGMLQuantizationType.Q8_0)
  _, got = weights.load_gguf(path)
  for k in ("w_gate", "w_up", "w_down"):
    want = params["layers"][k]
    # Q8_0: blocks of 32 along `in` with scale max|w|/127, so each value is within half a step.
    step = np.abs(want).max() / 127
    np.testing.assert_allclose(got["layers"][k], want, atol=step / 2 + 1e-7, rtol=0, err_msg=k)
    assert not np.array_equal(got["layers"][k], want)  # it really went through the quantizer
  np.testing.assert_array_equal(got["layers"]["wq"], params["layers"]["wq"])


def test_truncated_gguf_is_a_clear_error(tmp_path):
  cfg = get_model_config("tiny")
  path = write_llama_gguf(tmp_path / "m.gguf", cfg, random_params(cfg))
  data = path.read_bytes()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(ValueError, match=r"cut\.gguf.*(truncated|corrupt)"):
    weights.load_gguf(cut)


def test_gguf_of_another_architecture_is_refused(tmp_path):
  cfg = get_model_config("tiny")
  path = write_llama_gguf(tmp_path / "qwen.gguf", cfg, random_params(cfg), arch="qwen2")
  with pytest.raises(ValueError, match="architecture 'qwen2' is not supported.*bias"):
    weights.load_gguf(path)


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, tied):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = get_model_config("tiny", tie_embeddings=tied)
  params = random_params(cfg, seed=2)
  weights.export_hf(tmp_path / "hf", cfg, params)
  hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
  with torch.inference_mode():
    ref = hf(torch.tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(logits_of(cfg, params, TOKENS), ref, atol=1e-4, rtol=0)
  # ... and our importer reads the export back bit for bit.
  got_cfg, got = weights.load_safetensors(tmp_path / "hf")
  assert got_cfg == cfg
  assert_same_params(got, params)


def test_sharded_safetensors_with_index(tmp_path):
  from safetensors.numpy import load_file, save_file
  cfg = get_model_config("tiny")
  params = random_params(cfg, seed=3)
  d = weights.export_hf(tmp_path / "hf", cfg, params)
  tensors = load_file(str(d / "model.safetensors"))
  (d / "model.safetensors").unlink()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for fname, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(d / fname))
  (d / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
  _, got = weights.load_safetensors(d)
  assert_same_params(got, params)


def test_wrong_architecture_safetensors_is_refused(tmp_path):
  cfg = get_model_config("tiny")
  d = weights.export_hf(tmp_path / "hf", cfg, random_params(cfg))
  conf = json.loads((d / "config.json").read_text())
  conf.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
  (d / "config.json").write_text(json.dumps(conf))
  with pytest.raises(ValueError, match=r"config\.json: architecture 'Qwen2ForCausalLM' is not supported"):
    weights.load_safetensors(d)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
  from safetensors.numpy import load_file, save_file
  cfg = get_model_config("tiny")
  d = weights.export_hf(tmp_path / "hf", cfg, random_params(cfg))
  tensors = load_file(str(d / "model.safetensors"))
  name = "model.layers.1.mlp.up_proj.weight"
  tensors[name] = np.zeros((cfg.mlp_dim + 1, cfg.d_model), np.float32)
  save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(ValueError, match=rf"'{name}' has shape \(129, 64\), expected \(128, 64\)"):
    weights.load_safetensors(d)


def test_load_model_from_export_sharded_and_cast(tmp_path):
  from cai_jax import sharding
  from cai_jax.models.load import load_model
  cfg = get_model_config("tiny")
  params = random_params(cfg, seed=4)
  d = weights.export_hf(tmp_path / "hf", cfg, params)
  section = base_config().model
  section.source, section.tokenizer, section.param_dtype = str(d), "bytes", "bfloat16"
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  loaded = load_model(section, mesh)
  wq = loaded.params["layers"]["wq"]
  assert wq.dtype == jnp.bfloat16 and loaded.cfg.param_dtype == "bfloat16"
  assert wq.sharding.mesh.shape == mesh.shape and "tensor" in str(wq.sharding.spec)
  np.testing.assert_array_equal(np.asarray(wq, np.float32),
                                np.asarray(jnp.asarray(params["layers"]["wq"], jnp.bfloat16), np.float32))
  assert loaded.chat.name == "chatml" and loaded.chat.system_prompt is None


def test_export_round_trip_keeps_the_tokenizer(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  from cai_jax.models.load import load_model
  from cai_jax.tokenizer import ByteTokenizer, HFTokenizer
  cfg = get_model_config("tiny")
  params = random_params(cfg, seed=5)
  section = base_config().model
  # A byte tokenizer has no files: the export marks it and load_model picks it up.
  section.source = str(weights.export_hf(tmp_path / "bytes", cfg, params, ByteTokenizer()))
  loaded = load_model(section)
  assert isinstance(loaded.tokenizer, ByteTokenizer)
  np.testing.assert_array_equal(np.asarray(loaded.params["layers"]["w_up"]), params["layers"]["w_up"])
  # A BPE tokenizer is saved as tokenizer.json and read back.
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(["hello world, hello there"] * 4, trainers.BpeTrainer(
      vocab_size=cfg.vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok = HFTokenizer(bpe, eos_id=bpe.token_to_id("<|endoftext|>"))
  section.source = str(weights.export_hf(tmp_path / "bpe", cfg, params, tok))
  loaded = load_model(section)
  text = "hello there<|im_end|>"
  assert loaded.tokenizer.encode(text) == tok.encode(text) and loaded.tokenizer.eos_id == tok.eos_id
  assert set(loaded.tokenizer.stop_ids) == {tok.eos_id, bpe.token_to_id("<|im_end|>")}


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
  from cai_jax.models.load import load_model
  cfg = get_model_config("tiny", vocab_size=200)
  d = weights.export_hf(tmp_path / "hf", cfg, random_params(cfg))
  section = base_config().model
  section.source, section.tokenizer = str(d), "bytes"
  with pytest.raises(ValueError, match="264 tokens.*only 200"):
    load_model(section)


def test_config_typo_is_a_plain_exit_message():
  from cai_jax.cli import load_config
  with pytest.raises(SystemExit, match="model has no field 'sourse'; did you mean 'source'"):
    load_config(["--config=experiments/tiny.py", "--config.model.sourse=x"])


def test_bfloat16_safetensors_import_without_torch_in_the_reader(tmp_path):
  """HF checkpoints are mostly bf16; the reader widens them bit-exactly with NumPy alone."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file, save_file
  cfg = get_model_config("tiny")
  d = weights.export_hf(tmp_path / "hf", cfg, random_params(cfg, seed=5))
  f32 = load_file(str(d / "model.safetensors"))
  save_file({k: v.to(torch.bfloat16) for k, v in f32.items()}, str(d / "model.safetensors"))
  _, got = weights.load_safetensors(d)
  want = f32["model.layers.1.self_attn.k_proj.weight"].to(torch.bfloat16).float().numpy().T
  np.testing.assert_array_equal(got["layers"]["wk"][1], want)
  assert not np.array_equal(want, f32["model.layers.1.self_attn.k_proj.weight"].numpy().T)


def test_cot_judge_without_the_judge_is_a_config_error():
  from cai_jax.cli import load_config
  with pytest.raises(SystemExit, match="eval.cot.*judge=True"):
    load_config(["--config=experiments/tiny.py", "--config.eval.judge=False", "--config.eval.cot=True"])
