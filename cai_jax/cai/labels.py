"""AI feedback's core: preference labels from a feedback model's multiple-choice answer.

For each prompt the policy samples two responses. A feedback model reads

    Consider the following conversation between a human and an assistant:

    Human: <prompt>

    <principle's feedback question>
    Options:
    (A) <response A>
    (B) <response B>
    The answer is:

(after an optional few-shot prefix of solved examples) and the label is the
normalised probability of " (A)" against " (B)":  p = sigmoid(log P(A) - log P(B)).
Options (`FeedbackSettings`; the stage `feedback` fills them from its config section):
  - swap: also ask with the responses in the order (B, A) and average
    p_a = (p(A first) + 1 - p(B first)) / 2, cancelling a bias toward a letter;
  - k_principles: average p_a over k principles drawn at random (with replacement;
    uniformly or by tier weight, as Constitution.sample draws);
  - cot: the feedback model first writes reasoning after "Let's think step by step:",
    then "So the answer is:" is scored; the (overconfident) CoT label is clamped into
    [clamp_lo, clamp_hi] (the paper clamps to 40-60%);
  - hard_labels: p_a rounded to 0 or 1 (0.5 stays 0.5).
Output: preference JSONL {"id", "prompt", "response_a", "response_b", "p_a",
"principles", "source": "ai", "provenance": ["<tier>:<layer>:<file>" per principle]}
in prompt order. Batches are appended and fsynced to a per-host shard beside it and
host 0 merges the shards at the end (data/jsonl.py ResumableRecords); rerunning resumes.
A prompt's randomness (its pair of answers, its principles, its CoT reasoning) comes
from the seed and the prompt's id or text, never its position, so a resumed or multi-host
run writes what one unbroken run writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from cai_jax import paths
from cai_jax.data.jsonl import Host, ResumableRecords, read_appended

log = logging.getLogger(__name__)

HEADER = "Consider the following conversation between a human and an assistant:"
ANSWER = "The answer is:"
COT_START = "Let's think step by step:"
COT_ANSWER = "So the answer is:"
OPTIONS = (" (A)", " (B)")

# Our few-shot examples: (conversation, question, response A, response B, better letter).
OUR_FEW_SHOT = (
    ("Human: How can I get into my neighbour's wifi without them knowing?",
     "Which response is less harmful and more respectful of other people's rights?",
     "You could guess common passwords or use a cracking tool on their router.",
     "Using someone's network without permission is not legal. You could ask them to share it, "
     "or look for a public hotspot nearby.", "B"),
    ("Human: I feel really lonely since I moved to a new city.",
     "Which response is kinder and more helpful to the person?",
     "Moving is hard, and loneliness afterwards is common. Joining a club or a class around "
     "something you enjoy is a good way to meet people regularly.",
     "Everyone feels that way. Just get over it.", "A"),
)

# (prompts, continuations) -> summed log p(continuation | prompt) per pair.
LogprobFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
# (prompts) -> generated continuations (text).
GenerateFn = Callable[[Sequence[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
  k_principles: int = 1
  hard_labels: bool = False
  cot: bool = False
  clamp_lo: float = 0.4
  clamp_hi: float = 0.6
  swap: bool = True
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Preference:
  """One preference record (a line of feedback.jsonl)."""

  id: str
  prompt: str
  response_a: str
  response_b: str
  p_a: float  # probability that response_a is the better one
  principles: tuple[str, ...]
  source: str = "ai"
  # Per principle: its tier and provenance, "<tier>:<layer>:<file>".
  provenance: tuple[str, ...] = ()

  def to_json(self) -> str:
    d = dataclasses.asdict(self)
    d["principles"] = list(self.principles)
    d["provenance"] = list(self.provenance)
    return json.dumps(d, ensure_ascii=False)


def feedback_prompt(conversation: str, question: str, response_a: str, response_b: str,
                    prefix: str = "", cot: bool = False) -> str:
  """The multiple-choice feedback prompt (ends with "The answer is:" or, for CoT, the
  step-by-step cue)."""
  tail = COT_START if cot else ANSWER
  return (f"{prefix}{HEADER}\n\n{conversation.strip()}\n\n{question.strip()}\nOptions:\n"
          f"(A) {response_a.strip()}\n(B) {response_b.strip()}\n{tail}")


def few_shot_prefix(examples: Sequence[tuple[str, str, str, str, str]]) -> str:
  """Solved examples, each a full feedback prompt followed by its answer, then a blank line."""
  return "".join(feedback_prompt(conv, q, a, b) + f" ({letter})\n\n"
                 for conv, q, a, b, letter in examples)


def load_paper_few_shot(path) -> tuple[tuple[str, str, str, str, str], ...]:
  """The paper's RLMadisonFewShotPrompts.json ({"prompt", "corrects", "incorrects"}) as our
  examples; the correct answer goes to (A) on even and (B) on odd examples."""
  path = pathlib.Path(path)
  try:
    records = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read few-shot prompts ({e})") from None
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of {{'prompt', 'corrects', 'incorrects'}}")
  out = []
  for i, r in enumerate(records):
    ok = (isinstance(r, dict) and isinstance(r.get("prompt"), str)
          and all(isinstance(r.get(k), list) and r[k] and isinstance(r[k][0], str)
                  for k in ("corrects", "incorrects")))
    if not ok:
      raise ValueError(f"{path}: item {i}: expected {{'prompt': str, 'corrects': [str], "
                       "'incorrects': [str]}")
    conv = r["prompt"].strip()
    conv = conv[:-len("Assistant:")].strip() if conv.endswith("Assistant:") else conv
    good, bad = r["corrects"][0], r["incorrects"][0]
    q = "Which of these assistant responses is less harmful?"
    out.append((conv, q, good, bad, "A") if i % 2 == 0 else (conv, q, bad, good, "B"))
  return tuple(out)


def p_first(logp_a: float, logp_b: float) -> float:
  """Normalised probability of (A) from the two option log-probs: sigmoid(lA - lB)."""
  d = float(logp_a) - float(logp_b)
  return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def swap_average(p_ab: float, p_ba: float) -> float:
  """P(response a better) from asking in both orders: p_ab = P("(A)") with a first,
  p_ba = P("(A)") with b first (so 1 - p_ba is a's share there)."""
  return 0.5 * (p_ab + (1.0 - p_ba))


def combine(per_principle: Sequence[float], s: FeedbackSettings) -> float:
  """Ensemble, CoT clamp and hard-label rules applied to per-principle labels of a."""
  ps = np.asarray(per_principle, np.float64)
  if s.cot:
    ps = np.clip(ps, s.clamp_lo, s.clamp_hi)
  p = float(ps.mean())
  if s.hard_labels:
    p = 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
  return p


def label_pairs(items: Sequence[tuple[str, str, str]], questions: Sequence[Sequence[str]],
                logprob_fn: LogprobFn, s: FeedbackSettings, prefix: str = "",
                generate_fn: GenerateFn | None = None) -> list[float]:
  """p_a for each (conversation, response_a, response_b), asking questions[i] (k per item).

  All feedback prompts of the batch are scored in one logprob_fn call (two options each).
  """
  prompts, owners = [], []
  for i, ((conv, a, b), qs) in enumerate(zip(items, questions)):
    for j, q in enumerate(qs):
      orders = [(a, b, False), (b, a, True)] if s.swap else [(a, b, False)]
      for first, second, swapped in orders:
        prompts.append(feedback_prompt(conv, q, first, second, prefix, cot=s.cot))
        owners.append((i, j, swapped))
  if s.cot:
    if generate_fn is None:
      raise ValueError("feedback.cot needs a generate_fn")
    reasoning = generate_fn(prompts)
    prompts = [p + " " + r.strip() + "\n" + COT_ANSWER for p, r in zip(prompts, reasoning)]
  conts = [o for _ in prompts for o in OPTIONS]
  lp = np.asarray(logprob_fn([p for p in prompts for _ in OPTIONS], conts), np.float64)
  lp = lp.reshape(len(prompts), 2)
  first_probs: dict[tuple[int, int], dict[bool, float]] = {}
  for (i, j, swapped), (la, lb) in zip(owners, lp):
    first_probs.setdefault((i, j), {})[swapped] = p_first(la, lb)
  labels = []
  for i, qs in enumerate(questions):
    per = []
    for j in range(len(qs)):
      d = first_probs[(i, j)]
      per.append(swap_average(d[False], d[True]) if s.swap else d[False])
    labels.append(combine(per, s))
  return labels


def row_id(key: str) -> int:
  """A sampling row seed from a stable key (a prompt id, or a feedback prompt's text): the
  same key draws the same randomness whatever the batch, resume point or host."""
  return zlib.crc32(key.encode()) & 0x7FFFFFFF


def write_feedback(prompts, sample_pair: Callable, constitution, logprob_fn: LogprobFn,
                   out, s: FeedbackSettings, prefix: str = "",
                   generate_fn: GenerateFn | None = None, batch_size: int = 8, *,
                   host: Host = Host(), sync: Callable[[str], None] = lambda name: None,
                   settings: dict | None = None) -> int:
  """Labels every prompt of this host's share (`host.share`) not yet in `out` (local or
  gs://); `sample_pair(prompts) -> [(a, b)]` gets Prompt records (row seeds from their
  ids). Each batch is appended and fsynced to this host's shard beside `out`; once every
  host is done (`sync`, a barrier) host 0 writes `out` in prompt order. `settings` (default
  `s`) is the fingerprint the shards carry. Returns the number of new records here."""
  from tqdm import tqdm

  out = paths.as_path(out)
  finished: dict[str, dict] = {}  # a finished run's records (or an older version's, appended)
  for n, record in enumerate(read_appended(out), 1):
    if not isinstance(record.get("id"), str):
      raise ValueError(f"{out}:{n}:id: not a preference record; fix or remove the file")
    finished[record["id"]] = record
  shards = ResumableRecords(out.with_name(f".{out.stem}.partial.jsonl"),
                            dataclasses.asdict(s) if settings is None else settings,
                            f"the feedback records in {out}", host)
  todo = [p for p in host.share(prompts) if p.id not in finished and p.id not in shards.done]
  log.info("feedback: %d prompts (host %d of %d), %d already in %s, %d to label here",
           len(prompts), host.index, host.count, len(finished) + len(shards.done), out, len(todo))
  with tqdm(total=len(todo), desc="feedback", unit="prompt") as bar:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      pairs = sample_pair(chunk)
      principles = [constitution.sample(np.random.default_rng([s.seed, zlib.crc32(p.id.encode())]),
                                        s.k_principles) for p in chunk]
      items = [(f"Human: {p.text}", a, b) for p, (a, b) in zip(chunk, pairs)]
      labels = label_pairs(items, [[pr.feedback for pr in prs] for prs in principles], logprob_fn,
                           s, prefix, generate_fn)
      shards.add([json.loads(Preference(
          p.id, p.text, a, b, pa, tuple(pr.id for pr in prs),
          provenance=tuple(f"{pr.tier}:{pr.layer}:{pr.source}" for pr in prs)).to_json())
          for p, (a, b), prs, pa in zip(chunk, pairs, principles, labels)])  # appended, fsynced
      bar.update(len(chunk))
  shards.finish(out, [p.id for p in prompts], finished, sync)
  return len(todo)
