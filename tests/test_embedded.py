"""The embedded SmolLM2-135M-Instruct: our import vs transformers' own GGUF loader (slow)."""

import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow

CONVERSATION = [{"role": "user", "content": "Could you explain, in two short sentences, why the sky "
                 "looks blue during the day but red at sunset? Mention 1 or 2 numbers, e.g. 450nm."}]
TEXTS = ["Hello world!", "  two  spaces and\ttabs\nnewline", "Numbers 1234567 and 3.14159",
         "Unicode: café, naïve, 日本語, emoji 🙂", "<|im_start|>user\nHi<|im_end|>\n"]


@pytest.fixture(scope="module")
def ours():
  from cai_jax.config import base_config
  from cai_jax.models.load import load_model
  return load_model(base_config().model)


@pytest.fixture(scope="module")
def hf_dir():
  from cai_jax.weights import embedded_model_path
  return embedded_model_path()


@pytest.fixture(scope="module")
def hf_model(hf_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(hf_dir.parent), gguf_file=hf_dir.name, dtype=torch.float32)
  return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer(hf_dir):
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(hf_dir.parent), gguf_file=hf_dir.name)


def test_embedded_shape_and_special_ids(ours):
  cfg, tok = ours.cfg, ours.tokenizer
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
          cfg.vocab_size, cfg.rope_theta, cfg.tie_embeddings) == (30, 576, 9, 3, 64, 1536, 49152,
                                                                  100_000.0, True)
  assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|im_end|>") == 2
  assert set(tok.stop_ids) == {0, 2}
  assert tok.vocab_size == cfg.vocab_size


def test_encode_matches_transformers(ours, hf_tokenizer):
  for text in TEXTS + [ours.chat.format(CONVERSATION)]:
    want = hf_tokenizer.encode(text, add_special_tokens=False)
    assert ours.tokenizer.encode(text) == want, text
    assert ours.tokenizer.decode(want, skip_special=False) == hf_tokenizer.decode(want)


def test_logits_match_transformers(ours, hf_model):
  import torch
  ids = ours.tokenizer.encode(ours.chat.format(CONVERSATION))
  ids = (ids * 2)[:64]
  assert len(ids) == 64
  logits, _ = ours.module()(jnp.asarray([ids]), jnp.arange(64)[None])
  with torch.inference_mode():
    ref = hf_model(torch.tensor([ids])).logits[0].float().numpy()
  err = float(np.max(np.abs(np.asarray(logits[0]) - ref)))
  print(f"\nmax |logits(cai_jax) - logits(transformers)| over 64 tokens (fp32): {err:.3e}")
  assert err <= 1e-3
  assert (np.argmax(logits[0], -1) == np.argmax(ref, -1)).all()
