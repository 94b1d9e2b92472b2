"""Preference pairs for reward-model training: loaders, tokenization and batches.

Sources: our preference JSONL (stage `feedback`; {"id", "prompt", "response_a",
"response_b", "p_a", "principles", "source"}) and hh-rlhf JSONL(.gz)
({"chosen", "rejected"} transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...").
Texts are rendered with the model's chat template; each side is scored at its
last token. Batches are a pure function of (seed, step), so a resumed run sees
the same data as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import zlib
from collections.abc import Sequence

import numpy as np

from cai_jax.data.jsonl import iter_jsonl


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two conversations (chat messages) and the probability that `a` is the better one."""

  id: str
  a: tuple[tuple[str, str], ...]  # ((role, content), ...)
  b: tuple[tuple[str, str], ...]
  p_a: float
  source: str  # "ai" | "human"


_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_transcript(text: str, where: str = "") -> tuple[tuple[str, str], ...]:
  """"\\n\\nHuman: x\\n\\nAssistant: y" -> (("user", "x"), ("assistant", "y"))."""
  parts = _TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n"))
  if len(parts) < 3 or parts[0].strip():
    raise ValueError(f"{where}: expected a transcript of '\\n\\nHuman: ...' / '\\n\\nAssistant: ...' "
                     f"turns, got {text[:60]!r}")
  roles = {"Human": "user", "Assistant": "assistant"}
  return tuple((roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2))


def _string(where, rec, field):
  v = rec.get(field)
  if not isinstance(v, str):
    raise ValueError(f"{where}:{field}: expected a string, got {v!r:.60}")
  return v


def load_preference_jsonl(path) -> list[Pair]:
  """Our preference JSONL; errors name file:line:field."""
  pairs = []
  for where, rec in iter_jsonl(path):
    prompt = _string(where, rec, "prompt")
    a, b = _string(where, rec, "response_a"), _string(where, rec, "response_b")
    p = rec.get("p_a")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
      raise ValueError(f"{where}:p_a: expected a number in [0, 1], got {p!r}")
    rid = rec.get("id", where)
    user = ("user", prompt)
    pairs.append(Pair(str(rid), (user, ("assistant", a)), (user, ("assistant", b)), float(p),
                      str(rec.get("source", "ai"))))
  return pairs


def load_hh_pairs(path, limit: int = -1, seed: int = 0) -> list[Pair]:
  """hh-rlhf {"chosen", "rejected"}; the chosen side goes to a or b at random (p_a = 1 or 0)."""
  pairs = []
  for where, rec in iter_jsonl(path):
    if 0 <= limit <= len(pairs):
      break
    chosen = parse_transcript(_string(where, rec, "chosen"), f"{where}:chosen")
    rejected = parse_transcript(_string(where, rec, "rejected"), f"{where}:rejected")
    rid = f"hh:{pathlib.Path(path).name}:{where.rsplit(':', 1)[1]}"
    if np.random.default_rng([seed, zlib.crc32(rid.encode())]).random() < 0.5:
      pairs.append(Pair(rid, chosen, rejected, 1.0, "human"))
    else:
      pairs.append(Pair(rid, rejected, chosen, 0.0, "human"))
  return pairs


def split_heldout(pairs: Sequence[Pair], fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
  """(train, held-out) by a hash of each id: stable when the file grows."""
  train, held = [], []
  for p in pairs:
    u = (zlib.crc32(f"{seed}:{p.id}".encode()) & 0xFFFFFFFF) / 2**32
    (held if u < fraction else train).append(p)
  return train, held


def encode_side(conv, tokenizer, chat, max_len: int) -> list[int]:
  """Token ids of one conversation (no generation prompt), keeping the last max_len.

  The template's newline after the final end-of-turn is dropped, so the last token is the
  end-of-turn (chatml <|im_end|>) or the answer's last token: where PPO reads the reward
  (the last response token, the stop token included)."""
  text = chat.format([{"role": r, "content": c} for r, c in conv], add_generation_prompt=False)
  text = text.rstrip("\n")
  ids = tokenizer.encode(text)
  return ids[-max_len:]


def make_batch(pairs: Sequence[Pair], tokenizer, chat, max_len: int, batch_size: int,
               pad_id: int) -> dict[str, np.ndarray]:
  """Arrays for rm_step: tokens_a/b [B, L], last_a/b [B], p_a [B], weight [B] (0 = padding row).

  L is the longest side rounded up to a multiple of 16 (few compiled shapes)."""
  enc = [(encode_side(p.a, tokenizer, chat, max_len), encode_side(p.b, tokenizer, chat, max_len))
         for p in pairs]
  longest = max([max(len(a), len(b)) for a, b in enc] + [1])
  L = min(-(-longest // 16) * 16, -(-max_len // 16) * 16)
  B = batch_size
  out = dict(tokens_a=np.full((B, L), pad_id, np.int32), tokens_b=np.full((B, L), pad_id, np.int32),
             last_a=np.zeros(B, np.int32), last_b=np.zeros(B, np.int32),
             p_a=np.full(B, 0.5, np.float32), weight=np.zeros(B, np.float32))
  for i, ((a, b), p) in enumerate(zip(enc, pairs)):
    out["tokens_a"][i, :len(a)] = a
    out["tokens_b"][i, :len(b)] = b
    out["last_a"][i], out["last_b"][i] = len(a) - 1, len(b) - 1
    out["p_a"][i], out["weight"][i] = p.p_a, 1.0
  return out


def mixed_batches(ai: Sequence[Pair], human: Sequence[Pair], human_fraction: float, batch_size: int,
                  seed: int, start_step: int = 0):
  """Infinite stream of pair lists; step s draws round(f * B) human and the rest AI pairs
  (uniformly, from rng(seed, s)). A missing source is replaced by the other."""
  n_h = int(round(human_fraction * batch_size))
  if not human:
    n_h = 0
  if not ai:
    n_h = batch_size
  if not ai and not human:
    raise ValueError("rm: no preference pairs (set rm.ai_data and/or rm.human_data)")
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    chosen = [human[i] for i in rng.integers(0, len(human), n_h)] if n_h else []
    chosen += [ai[i] for i in rng.integers(0, len(ai), batch_size - n_h)] if batch_size > n_h else []
    yield chosen
    step += 1
