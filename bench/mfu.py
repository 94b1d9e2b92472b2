"""MFU of the SFT step (and the PPO iteration's rollout / update split), plus its memory vs the plan.

  python bench/mfu.py                                   # 135M shape, fp32, 8 x 512, remat, CPU
  python bench/mfu.py --preset llama3_2_1b --dtype bfloat16 --batch 16 --seq 2048   # on an accelerator
  python bench/mfu.py --ppo-metrics runs/quickstart/ppo/metrics.jsonl

The SFT step is `train.sft.make_sft_step` (AdamW, global-norm clip 1.0, the fused
chunked cross-entropy) on a random init of --preset (MFU does not depend on the
weights), in its own subprocess on one device; the first step (compile) is not timed.

FLOPs per token (model FLOPs, PaLM appendix B convention):
    6 * N_matmul + 12 * L * T * (n_heads * head_dim)
with N_matmul = L * (d * head_dim * (n_heads + 2 * n_kv_heads) + n_heads * head_dim * d
+ 3 * d * mlp) + vocab * d (the read-out; the embedding lookup is no matmul), and the
attention term counting the full T x T score matrix (forward + backward). MFU = model
FLOP/s / peak FLOP/s. With remat the forward of every block runs twice, so the hardware
does 8 * N_matmul + 16 * L * T * n_heads * head_dim per token: that ratio is HFU.
Peak FLOP/s: on an accelerator the vendor's dense bf16 (or fp32) figure for its
device_kind; on CPU there is no honest nominal peak, so the best fp32
[2048 x 2048] matmul in JAX on the same cores, measured right after the steps (under
the same load: the 1-min load average is printed), stands in -- CPU "MFU" is a share
of what XLA's matmul reaches here, not of the silicon's peak.

Memory: the worker reads its resident set size just before the first step (runtime +
state) and its peak after the steps (ru_maxrss); their difference is what the step
itself added (temporaries, outputs not donated, compile), printed beside the
planner's compiled prediction for the same shape (cai_jax/train/memory.py).

PPO: --ppo-metrics reads a ppo stage's metrics.jsonl (rollout_time / update_time per
iteration, measured by train/ppo.py) and prints the rollout share; iteration 1 (which
compiles) is left out when there are more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# Dense peak FLOP/s per device (bf16, fp32) by jax device_kind prefix; vendor datasheets.
PEAKS = {"TPU v4": (275e12, None), "TPU v5 lite": (197e12, None), "TPU v5e": (197e12, None),
         "TPU v5p": (459e12, None), "TPU v5": (459e12, None), "TPU v6": (918e12, None),
         "NVIDIA H100": (989e12, 67e12), "NVIDIA H200": (989e12, 67e12),
         "NVIDIA A100": (312e12, 19.5e12)}


def model_flops_per_token(cfg, seq_len: int, remat: bool = False) -> float:
  """Model FLOPs per trained token (see the module docstring); remat=True gives hardware FLOPs."""
  d, L, hd = cfg.d_model, cfg.n_layers, cfg.head_dim
  per_layer = d * hd * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.n_heads * hd * d + 3 * d * cfg.mlp_dim
  matmul, attention = L * per_layer, L * seq_len * cfg.n_heads * hd
  head = cfg.vocab_size * d
  if remat:  # the blocks' forward again in the backward pass: 2 more FLOPs per weight, 4 per score
    return 8 * matmul + 6 * head + 16 * attention
  return 6 * (matmul + head) + 12 * attention


def _rss_now() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def run_sft(preset: str, B: int, T: int, steps: int, remat: bool, dtype: str) -> dict:
  """The worker: times the SFT step on one device; reports step times and RSS."""
  import jax
  from cai_jax import sharding
  from cai_jax.config import optim_section
  from cai_jax.models.load import ModelSpec, load_model
  from cai_jax.train import sft
  from cai_jax.train.state import init_train_state, make_optimizer

  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  m = load_model(ModelSpec(source="random", preset=preset, tokenizer="bytes", remat=remat, dtype=dtype),
                 mesh)
  tx = make_optimizer(optim_section(lr=1e-5, grad_clip=1.0))
  p_shard = jax.tree.map(lambda x: x.sharding, m.params)
  state, s_shard = init_train_state(m.params, p_shard, tx, jax.random.key(0), mesh, donate=True)
  step = sft.make_sft_step(graphdef=m.graphdef, tx=tx, state_shardings=s_shard, mesh=mesh)
  rng = np.random.default_rng(0)
  mask = np.zeros((B, T), np.int32)
  mask[:, T // 4:] = 1
  batch = sharding.shard_batch(dict(
      tokens=rng.integers(0, m.cfg.vocab_size, (B, T)).astype(np.int32),
      positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
      segment_ids=np.ones((B, T), np.int32), loss_mask=mask), mesh)
  jax.block_until_ready(state)
  rss_before = _rss_now()
  load_before = os.getloadavg()[0]
  times, losses = [], []
  for _ in range(steps + 1):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))  # waits for the step
    times.append(time.perf_counter() - t0)
  rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  platform = jax.devices()[0].platform
  # On CPU the stand-in peak is measured right after the steps, under the same load.
  return dict(step_s=statistics.median(times[1:]), first_s=times[0], losses=losses,
              rss_before=rss_before, rss_peak=rss_peak, device=jax.devices()[0].device_kind,
              platform=platform, matmul_peak=matmul_peak() if platform == "cpu" else None,
              load=(load_before, os.getloadavg()[0]))


from train import matmul_peak  # noqa: E402  (bench/train.py: the same peak its table uses)


def peak_flops(device_kind: str, dtype: str, measured: float | None) -> tuple[float, str]:
  """(peak FLOP/s, where the number comes from) for the device the step ran on."""
  for prefix, (bf16, fp32) in PEAKS.items():
    if device_kind.startswith(prefix):
      value = bf16 if dtype == "bfloat16" or fp32 is None else fp32
      return value, f"{prefix} datasheet, dense {'bf16' if value == bf16 else 'fp32'}"
  if measured is None:
    measured = matmul_peak()
  return measured, "best fp32 2048^3 matmul measured after the steps (no nominal CPU peak)"


def ppo_split(path: str) -> dict | None:
  """Median rollout / update seconds per PPO iteration from a ppo metrics.jsonl."""
  rows = [json.loads(line) for line in open(path) if line.strip()]
  rows = [r for r in rows if "rollout_time" in r]
  if not rows:
    return None
  timed = rows[1:] if len(rows) > 1 else rows  # iteration 1 includes compiling
  rollout = statistics.median(r["rollout_time"] for r in timed)
  update = statistics.median(r["update_time"] for r in timed)
  return dict(iterations=len(timed), rollout_s=rollout, update_s=update,
              rollout_share=rollout / (rollout + update))


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="smollm2_135m")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--no-remat", dest="remat", action="store_false")
  p.add_argument("--ppo-metrics", default="")
  p.add_argument("--worker", action="store_true")
  a = p.parse_args()
  if a.worker:
    print(json.dumps(run_sft(a.preset, a.batch, a.seq, a.steps, a.remat, a.dtype)))
    return

  from cai_jax.config import optim_section
  from cai_jax.models.config import get_model_config
  from cai_jax.train import memory

  args = ["--preset", a.preset, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
          "--dtype", a.dtype] + ([] if a.remat else ["--no-remat"])
  out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                       check=False)
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
  if out.returncode or not lines:
    raise SystemExit(f"SFT worker failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
  r = json.loads(lines[-1])
  cfg = get_model_config(a.preset, dtype=a.dtype, remat=a.remat)
  peak, peak_src = peak_flops(r["device"], a.dtype, r["matmul_peak"])
  tokens = a.batch * a.seq
  model = model_flops_per_token(cfg, a.seq) * tokens
  hardware = model_flops_per_token(cfg, a.seq, remat=a.remat) * tokens
  print(f"\nSFT step, {a.preset} shape (random init), {a.dtype} compute, batch {a.batch} x {a.seq}, "
        f"remat {a.remat}, AdamW; {r['platform']} ({r['device']}, {os.cpu_count()} host cores); "
        f"median of {a.steps} steps after 1 compile step ({r['first_s']:.1f} s)")
  print("| s/step | tokens/s | model TFLOP/step | achieved TFLOP/s | peak TFLOP/s | MFU | HFU |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {r['step_s']:.2f} | {tokens / r['step_s']:.0f} | {model / 1e12:.2f} | "
        f"{model / r['step_s'] / 1e12:.3f} | {peak / 1e12:.3f} | {100 * model / r['step_s'] / peak:.1f}% | "
        f"{100 * hardware / r['step_s'] / peak:.1f}% |")
  print(f"peak: {peak_src}; 1-min load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after "
        f"the steps ({os.cpu_count()} cores); losses {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")

  plan = memory.compiled_step(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, memory.StepShape(
      batch_size=a.batch, seq_len=a.seq, optim=optim_section(lr=1e-5, grad_clip=1.0).to_dict()))
  added = r["rss_peak"] - r["rss_before"]
  print("\n| memory (GiB) | measured | plan (compiled) |\n|---|---|---|")
  print(f"| resident before the first step (runtime + state) | {r['rss_before'] / memory.GIB:.2f} | "
        f"state {plan.argument / memory.GIB:.2f} |")
  print(f"| added by the step (peak RSS - before) | {added / memory.GIB:.2f} | "
        f"temps + undonated outputs {(plan.peak - plan.argument) / memory.GIB:.2f} |")
  print(f"| peak RSS | {r['rss_peak'] / memory.GIB:.2f} | step peak {plan.peak / memory.GIB:.2f} |")

  if a.ppo_metrics:
    split = ppo_split(a.ppo_metrics)
    if split:
      print(f"\nPPO iteration ({a.ppo_metrics}, median of {split['iterations']} iterations): rollout "
            f"{split['rollout_s']:.1f} s, update {split['update_s']:.1f} s -> rollout share "
            f"{100 * split['rollout_share']:.0f}% of the iteration")


if __name__ == "__main__":
  main()
