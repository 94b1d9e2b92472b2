"""One Tokenizer protocol, its back ends, and chat formatting.

Back ends behind the protocol:
  * `ByteTokenizer`: bytes as ids plus a few special tokens (tests, tiny models).
  * byte-level BPE (GGUF metadata or tokenizer.json, via `tokenizers`) and
    SentencePiece `.model` files — see `load_tokenizer`.

Chat templates turn a list of {"role", "content"} messages into the text the
model was trained on: ChatML (SmolLM2, Qwen), Llama-3, and the CAI paper's
plain transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  """What every part of cai_jax needs from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Token ids that end a generated answer (eos and the template's end-of-turn)."""
    ...

  def encode(self, text: str) -> list[int]:
    """Text (special-token strings included) -> ids. Adds no BOS/EOS by itself."""
    ...

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...

  def token_to_id(self, token: str) -> int | None: ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then special tokens; vocab 264 by default."""

  SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
              "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved|>")

  def __init__(self):
    self._special_ids = {tok: 256 + i for i, tok in enumerate(self.SPECIALS)}

  @property
  def vocab_size(self) -> int:
    return 256 + len(self.SPECIALS)

  @property
  def eos_id(self) -> int:
    return self._special_ids["<|endoftext|>"]

  @property
  def pad_id(self) -> int:
    return self.eos_id

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id, self._special_ids["<|im_end|>"], self._special_ids["<|eot_id|>"])

  def encode(self, text: str) -> list[int]:
    ids: list[int] = []
    i = 0
    while i < len(text):
      for tok, tid in self._special_ids.items():
        if text.startswith(tok, i):
          ids.append(tid)
          i += len(tok)
          break
      else:
        j = min((p for p in (text.find(t, i) for t in self._special_ids) if p != -1),
                default=len(text))
        ids.extend(text[i:j].encode("utf-8"))
        i = j
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    by_id = {v: k for k, v in self._special_ids.items()}
    out, buf = [], bytearray()
    for t in ids:
      t = int(t)
      if t < 256:
        buf.append(t)
        continue
      out.append(buf.decode("utf-8", errors="replace"))
      buf = bytearray()
      if not skip_special:
        out.append(by_id.get(t, ""))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)

  def token_to_id(self, token: str) -> int | None:
    if token in self._special_ids:
      return self._special_ids[token]
    data = token.encode("utf-8")
    return data[0] if len(data) == 1 else None


# ----------------------------------------------------------------------------- chat templates


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Formats conversations. `name` in {"chatml", "llama3", "transcript"}."""

  name: str = "chatml"
  system_prompt: str | None = None  # default system message, e.g. SmolLM2's

  def __post_init__(self):
    if self.name not in ("chatml", "llama3", "transcript"):
      raise ValueError(f"unknown chat template {self.name!r}; expected chatml, llama3 or transcript")

  def format(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Messages [{"role": system|user|assistant, "content": str}] -> prompt text."""
    messages = list(messages)
    for i, m in enumerate(messages):
      if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
        raise ValueError(f"message {i}: expected {{'role': system|user|assistant, 'content': str}}, "
                         f"got {m!r}")
    if self.system_prompt and self.name != "transcript" and (not messages or messages[0]["role"] != "system"):
      messages = [{"role": "system", "content": self.system_prompt}] + messages
    if self.name == "chatml":
      text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
      return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if self.name == "llama3":
      text = "<|begin_of_text|>" + "".join(
          f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
          for m in messages)
      return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")
    # The paper's transcript: system text (if any) is prepended as-is.
    names = {"user": "Human", "assistant": "Assistant"}
    text = "".join(m["content"] + "\n" if m["role"] == "system" else f"\n\n{names[m['role']]}: {m['content']}"
                   for m in messages)
    return text + ("\n\nAssistant:" if add_generation_prompt else "")

  def end_of_turn(self) -> str:
    """Text that closes an assistant turn in this template."""
    return {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "transcript": ""}[self.name]


# ----------------------------------------------------------------------------- BPE / SentencePiece


class HFTokenizer:
  """A `tokenizers.Tokenizer` (byte-level BPE) behind the cai_jax protocol.

  `stop_ids` are eos plus whichever end-of-turn tokens the vocabulary has
  (<|im_end|>, <|eot_id|>, <|endoftext|>, <|end_of_text|>).
  """

  _STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>")

  def __init__(self, tok, eos_id: int, pad_id: int | None = None, bos_id: int | None = None):
    self._tok = tok
    self._eos = int(eos_id)
    self._pad = int(self._eos if pad_id is None else pad_id)
    self.bos_id = bos_id

  @property
  def backend(self):
    """The underlying `tokenizers.Tokenizer`."""
    return self._tok

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def stop_ids(self) -> tuple[int, ...]:
    ids = [self._eos] + [self._tok.token_to_id(t) for t in self._STOP_TOKENS]
    return tuple(dict.fromkeys(i for i in ids if i is not None))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def save_hf(self, out_dir) -> None:
    """Writes tokenizer.json + tokenizer_config.json for transformers' AutoTokenizer."""
    import json
    import pathlib
    out = pathlib.Path(out_dir)
    self._tok.save(str(out / "tokenizer.json"))
    name = lambda i: self._tok.id_to_token(i) if i is not None else None  # noqa: E731
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": name(self._eos),
        "pad_token": name(self._pad), "bos_token": name(self.bos_id), "add_bos_token": False,
    }, indent=2) + "\n")


def _byte_level_pre_tokenizer(pre: str | None):
  """The split a GGUF's `tokenizer.ggml.pre` names, followed by byte-level mapping."""
  from tokenizers import Regex, pre_tokenizers
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("smollm", "starcoder", "refact"):  # digits one by one, then GPT-2's split
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx"):
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  if pre in (None, "default", "gpt-2", "gpt2"):
    return byte_level
  raise ValueError(f"tokenizer: GGUF pre-tokenizer {pre!r} is not supported; supported: smollm, "
                   "starcoder, refact, llama-bpe (llama3), gpt-2 / default")


def bpe_from_gguf_metadata(meta: dict) -> HFTokenizer:
  """Byte-level BPE (llama.cpp's "gpt2" tokenizer model) from GGUF tokenizer.ggml.* keys.

  Pre-tokenizer by `tokenizer.ggml.pre` (SmolLM2's "smollm": every digit on its
  own, then the byte-level split without a prefix space); byte-level decoder; tokens of type 3 ("control") and 4
  ("user defined") are added as special tokens so they match as wholes.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models

  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"GGUF tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') is read from "
                     "GGUF metadata; give model.tokenizer a tokenizer.json or SentencePiece .model")
  for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
    if key not in meta:
      raise ValueError(f"GGUF metadata lacks {key} (needed for the BPE tokenizer)")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
  tok.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
  tok.decoder = decoders.ByteLevel()
  special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
  tok.add_special_tokens(special)
  eos = meta.get("tokenizer.ggml.eos_token_id", vocab.get("<|endoftext|>", 0))
  pad = meta.get("tokenizer.ggml.padding_token_id", eos)
  return HFTokenizer(tok, eos_id=int(eos), pad_id=int(pad), bos_id=meta.get("tokenizer.ggml.bos_token_id"))


def _tokenizer_json(path) -> HFTokenizer:
  import json
  import pathlib

  from tokenizers import Tokenizer
  path = pathlib.Path(path)
  tok = Tokenizer.from_file(str(path))
  conf = path.parent / "tokenizer_config.json"
  names = json.loads(conf.read_text()) if conf.is_file() else {}

  def token_id(key: str, fallbacks: tuple[str, ...]) -> int | None:
    value = names.get(key)
    value = value.get("content") if isinstance(value, dict) else value
    for t in ((value,) if value else ()) + fallbacks:
      if tok.token_to_id(t) is not None:
        return tok.token_to_id(t)
    return None

  eos = token_id("eos_token", ("<|endoftext|>", "</s>", "<|end_of_text|>"))
  if eos is None:
    raise ValueError(f"{path}: cannot tell the end-of-sequence token (no eos_token in "
                     f"{conf.name} and no <|endoftext|> or </s> in the vocabulary)")
  return HFTokenizer(tok, eos_id=eos, pad_id=token_id("pad_token", ()), bos_id=token_id("bos_token", ()))


class SentencePieceTokenizer:
  """A SentencePiece `.model` behind the cai_jax protocol (no BOS/EOS added by encode)."""

  def __init__(self, path):
    import sentencepiece as spm
    self._sp = spm.SentencePieceProcessor(model_file=str(path))
    self._special = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())
                     if self._sp.is_control(i) or self._sp.is_unknown(i)}

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id,)

  def encode(self, text: str) -> list[int]:
    # Special-token strings (e.g. "</s>") are matched as wholes; the rest goes to SentencePiece.
    ids: list[int] = []
    names = sorted((s for s in self._special if s), key=len, reverse=True)
    i = 0
    while i < len(text):
      hits = [(text.find(s, i), s) for s in names]
      hits = [(p, s) for p, s in hits if p != -1]
      if not hits:
        ids.extend(self._sp.encode(text[i:]))
        break
      p, s = min(hits, key=lambda h: (h[0], -len(h[1])))
      if p > i:
        ids.extend(self._sp.encode(text[i:p]))
      ids.append(self._special[s])
      i = p + len(s)
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      return self._sp.decode([i for i in ids if not self._sp.is_control(i)])
    out, run = [], []
    for i in ids:
      if self._sp.is_control(i):
        out += [self._sp.decode(run), self._sp.id_to_piece(i)]
        run = []
      else:
        run.append(i)
    return "".join(out + [self._sp.decode(run)])

  def token_to_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)
    return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i


def load_tokenizer(spec_or_path, gguf_metadata: dict | None = None) -> Tokenizer:
  """A tokenizer from a spec: "bytes"; a tokenizer.json (or a directory holding one);
  a SentencePiece `.model`; a `.gguf` file; or "" with `gguf_metadata` (the GGUF's own BPE).
  """
  import pathlib
  spec = str(spec_or_path or "")
  if spec == "bytes":
    return ByteTokenizer()
  if not spec:
    if gguf_metadata is None:
      raise ValueError("load_tokenizer: no tokenizer given (expected 'bytes', a tokenizer.json, "
                       "a SentencePiece .model, a .gguf file, or GGUF metadata)")
    return bpe_from_gguf_metadata(gguf_metadata)
  path = pathlib.Path(spec)
  if path.is_dir():
    if (path / "tokenizer.json").is_file():
      return _tokenizer_json(path / "tokenizer.json")
    if (path / "tokenizer.model").is_file():
      return SentencePieceTokenizer(path / "tokenizer.model")
    raise FileNotFoundError(f"{path}: holds neither tokenizer.json nor tokenizer.model")
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer {spec!r}: no such file (expected 'bytes', a tokenizer.json, "
                            "a SentencePiece .model or a .gguf)")
  if path.suffix == ".json":
    return _tokenizer_json(path)
  if path.suffix == ".model":
    return SentencePieceTokenizer(path)
  if path.suffix == ".gguf":
    from cai_jax.weights import read_gguf_metadata
    return bpe_from_gguf_metadata(read_gguf_metadata(path))
  raise ValueError(f"tokenizer {spec!r}: unknown kind (expected .json, .model or .gguf)")


def default_system_prompt(jinja_template: str | None) -> str | None:
  """The system message a ChatML Jinja template inserts when none is given (SmolLM2 has one)."""
  import re
  if not jinja_template:
    return None
  m = re.search(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", jinja_template, re.S)
  return m.group(1) if m else None
