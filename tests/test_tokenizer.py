"""Tokenizer back ends: byte-level BPE (GGUF metadata, tokenizer.json), SentencePiece, bytes."""

import numpy as np
import pytest

from cai_jax.tokenizer import ByteTokenizer, bpe_from_gguf_metadata, load_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Constitutional AI trains a harmless assistant through self-improvement.",
    "Numbers like 2024 and 3.14159 should be split into digits: 1234567890.",
    "Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
    "Unicode text: café naïve 日本語 🙂 — dashes and “quotes”.",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PROBES = ["Hello world!", "  leading spaces and\ttabs\nand newlines  ", "room 101 has 12 chairs",
          "café 日本語 🙂", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
          "unseen wordsxyz qqq"]


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory):
  """A byte-level BPE trained here with the SmolLM2 pre-tokenizer, saved as tokenizer.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
  tok.save(str(path))
  return tok, path


def gguf_metadata_of(tok):
  """What llama.cpp's converter stores for a byte-level BPE: tokens by id, merges, token types."""
  import json
  model = json.loads(tok.to_str())["model"]
  tokens = [None] * tok.get_vocab_size()
  for t, i in tok.get_vocab().items():
    tokens[i] = t
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  types = [3 if t in SPECIALS else 1 for t in tokens]
  return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0}


def test_bpe_from_gguf_metadata_matches_the_trained_tokenizer(trained_bpe):
  ref, _ = trained_bpe
  ours = bpe_from_gguf_metadata(gguf_metadata_of(ref))
  assert ours.vocab_size == ref.get_vocab_size()
  for text in PROBES + CORPUS[:5]:
    assert ours.encode(text) == ref.encode(text).ids, text
    assert ours.decode(ours.encode(text), skip_special=False) == text


def test_bpe_digits_and_special_tokens(trained_bpe):
  ours = bpe_from_gguf_metadata(gguf_metadata_of(trained_bpe[0]))
  ids = ours.encode("2024")
  assert [ours.decode([i]) for i in ids] == ["2", "0", "2", "4"]
  im_end = ours.token_to_id("<|im_end|>")
  assert im_end == 2 and ours.encode("a<|im_end|>b").count(im_end) == 1
  assert ours.decode(ours.encode("hi<|im_end|>"), skip_special=True) == "hi"
  assert ours.eos_id == 2 and ours.pad_id == 0
  assert set(ours.stop_ids) == {ours.token_to_id("<|endoftext|>"), im_end}


def test_tokenizer_json_and_hf_export(trained_bpe, tmp_path):
  transformers = pytest.importorskip("transformers")
  ref, path = trained_bpe
  ours = load_tokenizer(path)
  assert ours.encode(PROBES[4]) == ref.encode(PROBES[4]).ids
  assert ours.eos_id == ref.token_to_id("<|endoftext|>")  # no tokenizer_config.json: the fallback
  ours.save_hf(tmp_path)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for text in PROBES:
    assert hf.encode(text, add_special_tokens=False) == ours.encode(text), text
  again = load_tokenizer(tmp_path)  # a directory with tokenizer.json + tokenizer_config.json
  assert again.encode(PROBES[0]) == ours.encode(PROBES[0]) and again.eos_id == ours.eos_id


def test_gguf_with_a_non_bpe_tokenizer_is_refused():
  with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'"):
    bpe_from_gguf_metadata({"tokenizer.ggml.model": "llama"})


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  d = tmp_path_factory.mktemp("spm")
  (d / "corpus.txt").write_text("\n".join(CORPUS))
  spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "m"), vocab_size=120,
                                 model_type="bpe", character_coverage=1.0, pad_id=3,
                                 minloglevel=2)
  return d / "m.model", spm.SentencePieceProcessor(model_file=str(d / "m.model"))


def test_sentencepiece_back_end(spm_model):
  path, sp = spm_model
  ours = load_tokenizer(path)
  assert ours.vocab_size == sp.get_piece_size() == 120
  assert (ours.eos_id, ours.pad_id, ours.stop_ids) == (sp.eos_id(), 3, (sp.eos_id(),))
  for text in ["The quick brown fox.", "Numbers 2024", "Human: hello\n\nAssistant: hi"]:
    assert ours.encode(text) == sp.encode(text)
    assert ours.decode(ours.encode(text)) == sp.decode(sp.encode(text))
  ids = ours.encode("hello</s>world")
  assert ids == sp.encode("hello") + [sp.eos_id()] + sp.encode("world")
  assert ours.decode(ids, skip_special=False) == "hello</s>world"
  assert ours.decode(ids) == sp.decode(sp.encode("hello") + sp.encode("world"))


def test_bytes_and_errors(tmp_path):
  tok = load_tokenizer("bytes")
  assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 264
  assert tok.encode("hi") == list(np.frombuffer(b"hi", np.uint8))
  with pytest.raises(FileNotFoundError, match="missing.json"):
    load_tokenizer(tmp_path / "missing.json")
  (tmp_path / "x.txt").write_text("x")
  with pytest.raises(ValueError, match="unknown kind"):
    load_tokenizer(tmp_path / "x.txt")
  with pytest.raises(ValueError, match="no tokenizer given"):
    load_tokenizer("")
