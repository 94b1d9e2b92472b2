"""The sampler on the embedded SmolLM2-135M-Instruct vs transformers' greedy `generate`."""

import jax
import numpy as np
import pytest

from cai_jax import sampling

pytestmark = pytest.mark.slow

PROMPTS = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
           "Explain how a bicycle works."]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def models():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")
  from cai_jax.config import base_config
  from cai_jax.models.load import load_model
  from cai_jax.weights import embedded_model_path

  config = base_config()
  config.model.source = "embedded"
  ours = load_model(config.model)
  path = embedded_model_path()
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
  return ours, hf.to(torch.float32).eval()


def test_greedy_tokens_match_transformers_generate(models):
  import torch
  ours, hf = models
  prompts = [ours.tokenizer.encode(ours.chat.format([{"role": "user", "content": p}])) for p in PROMPTS]
  # Ragged prompts in one batch on our side; no stop ids, so both make exactly NEW_TOKENS.
  out = sampling.generate(ours.graphdef, ours.params, prompts, rng=jax.random.key(0),
                          max_new_tokens=NEW_TOKENS, temperature=0.0, stop_ids=(),
                          pad_id=ours.tokenizer.pad_id)
  config = hf.generation_config
  config.eos_token_id = None  # never stop early; greedy choices are unaffected
  for i, ids in enumerate(prompts):
    with torch.inference_mode():
      ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=NEW_TOKENS, do_sample=False, generation_config=config,
                        pad_token_id=ours.tokenizer.pad_id)
    expected = ref[0, len(ids):].tolist()
    assert len(expected) == NEW_TOKENS
    got = out.row(i)
    first_diff = next((t for t in range(NEW_TOKENS) if got[t] != expected[t]), None)
    assert first_diff is None, (f"prompt {i}: first difference at token {first_diff}: "
                                f"{ours.tokenizer.decode(got)!r} vs {ours.tokenizer.decode(expected)!r}")
    # Our log-probs are the model's own: compare with HF's scores of the same tokens.
    with torch.inference_mode():
      logits = hf(ref).logits[0, len(ids) - 1:-1].float()
    hf_logp = torch.log_softmax(logits, -1)[torch.arange(NEW_TOKENS), ref[0, len(ids):]].numpy()
    np.testing.assert_allclose(out.logprobs[i], hf_logp, atol=2e-3)
