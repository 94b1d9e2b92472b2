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
