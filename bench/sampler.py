"""Decode speed: cai_jax's sampler vs HF transformers `generate`, same model, same prompts.

  python bench/sampler.py                       # float32, batch 1, 8, 32, 64 new tokens
  python bench/sampler.py --dtype bfloat16 --batches 1,8

Both sides run the embedded SmolLM2-135M-Instruct (dequantised GGUF) on CPU,
greedy, with the same token ids (chat-formatted helpfulness prompts, left-padded
for HF, right-padded for cai_jax) and no early stop, so each row makes exactly
--new-tokens tokens. Reported tokens/s = batch * new tokens / wall time of one
whole generate call (prefill included on both sides), median of --repeats
runs taken in alternation after a warm-up call. At batch 1 it also prints the
weight bytes streamed per second (every weight is read once per token) against
this machine's memory bandwidth, measured as a large numpy copy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def memory_bandwidth_gbs(n_bytes: int = 512 << 20, repeats: int = 5) -> float:
  """Best-of-n copy bandwidth (bytes read + written per second) in GB/s."""
  a = np.ones(n_bytes // 4, np.float32)
  b = np.empty_like(a)
  np.copyto(b, a)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    np.copyto(b, a)
    best = min(best, time.perf_counter() - t)
  return 2 * a.nbytes / best / 1e9


def load_models(dtype: str):
  import torch
  from transformers import AutoModelForCausalLM

  from cai_jax.models.load import ModelSpec, load_model
  from cai_jax.weights import embedded_model_path

  ours = load_model(ModelSpec(source="embedded", dtype=dtype, param_dtype=dtype), None, rules="sample")
  path = embedded_model_path()
  hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
  hf = hf.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]).eval()
  return ours, hf


def make_prompts(ours, batch: int) -> list[list[int]]:
  from cai_jax.data.prompts import load_prompts
  texts = [p.text for p in load_prompts("helpful")]
  return [ours.tokenizer.encode(ours.chat.format([{"role": "user", "content": texts[i % len(texts)]}]))
          for i in range(batch)]


def run_ours(ours, prompts, new_tokens: int) -> float:
  import jax

  from cai_jax import sampling
  t = time.perf_counter()
  out = sampling.generate(ours.graphdef, ours.params, prompts, rng=jax.random.key(0),
                          max_new_tokens=new_tokens, temperature=0.0, stop_ids=(),
                          pad_id=ours.tokenizer.pad_id, batch_size=len(prompts))
  dt = time.perf_counter() - t
  assert (out.lengths == new_tokens).all()
  return float(out.lengths.sum() / dt)


def run_hf(hf, prompts, new_tokens: int, pad_id: int) -> float:
  import torch
  width = max(len(p) for p in prompts)
  ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  t = time.perf_counter()
  with torch.inference_mode():
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
  dt = time.perf_counter() - t
  assert out.shape[1] - width == new_tokens
  return len(prompts) * new_tokens / dt


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import torch

  bandwidth = memory_bandwidth_gbs()
  ours, hf = load_models(args.dtype)
  weight_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in
                     __import__("jax").tree.leaves(ours.params))
  print(f"model: {ours.source}, {args.dtype}, {weight_bytes / 1e6:.0f} MB of weights; "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"memory bandwidth (numpy copy) {bandwidth:.1f} GB/s; load average "
        f"{os.getloadavg()[0]:.2f}")
  rows = []
  for batch in [int(b) for b in args.batches.split(",")]:
    prompts = make_prompts(ours, batch)
    run_ours(ours, prompts, args.new_tokens)  # compile + warm-up
    run_hf(hf, prompts, args.new_tokens, ours.tokenizer.pad_id)
    a, b = [], []
    for _ in range(args.repeats):
      a.append(run_ours(ours, prompts, args.new_tokens))
      b.append(run_hf(hf, prompts, args.new_tokens, ours.tokenizer.pad_id))
    rows.append((batch, statistics.median(a), statistics.median(b)))
    print(f"batch {batch}: cai_jax {[round(float(x), 1) for x in a]} / HF "
          f"{[round(float(x), 1) for x in b]} tokens/s", flush=True)
  print(f"\n| batch | cai_jax tok/s | HF generate tok/s | ratio |  ({args.dtype}, {args.new_tokens} "
        "new tokens, greedy)")
  print("|---|---|---|---|")
  for batch, ours_tps, hf_tps in rows:
    print(f"| {batch} | {ours_tps:.1f} | {hf_tps:.1f} | {ours_tps / hf_tps:.2f}x |")
  for batch, ours_tps, hf_tps in rows:
    if batch == 1:
      print(f"\nbatch 1: cai_jax streams {weight_bytes * ours_tps / 1e9:.1f} GB/s of weights, HF "
            f"{weight_bytes * hf_tps / 1e9:.1f} GB/s; measured memory bandwidth {bandwidth:.1f} GB/s "
            f"({weight_bytes * ours_tps / 1e9 / bandwidth:.0%} of it)")


if __name__ == "__main__":
  main()
