"""Stage `plan`: per-device memory of the SFT step and the sampler, before anything is allocated.

  python -m cai_jax plan --config experiments/plan.py          # the 135M SFT step of experiments/sft.py
  python -m cai_jax plan --config experiments/plan.py:8b       # 8B-shaped, bf16, on three meshes
  python -m cai_jax plan --config experiments/sft.py --config.plan.meshes="fsdp=8;data=2,fsdp=4"

Prints one column per mesh (plan.meshes): parameters, optimizer state, gradients,
batch and saved activations (with and without remat) computed from eval_shape and
the step's shardings; XLA's arguments, temporaries (remat on and off), largest
temporary and peak from the compiled step; the sampler's weights and KV cache; and
whether the step fits plan.device_memory_gib (or the slice's HBM). Meshes with
more devices than this process has compile on as many fake CPU devices in a
subprocess (see train/memory.py). Writes nothing; the summary is the last line.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
from tqdm import tqdm

from cai_jax import losses, sharding
from cai_jax.models.config import ModelConfig, get_model_config
from cai_jax.stages import common
from cai_jax.train import memory

log = logging.getLogger(__name__)
EMBEDDED_PRESET = "smollm2_135m"  # the shape of the embedded SmolLM2-135M-Instruct


def model_config(config) -> tuple[str, ModelConfig]:
  """(shape name, ModelConfig with config.model's numerics) without reading any weights."""
  m = config.model
  numerics = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=bool(m.remat))
  name = config.plan.preset or m.preset or (EMBEDDED_PRESET if m.source == "embedded" else "")
  if name:
    return name, get_model_config(name, **numerics)
  hf_config = pathlib.Path(m.source) / "config.json"
  if hf_config.is_file():
    from cai_jax import weights
    return str(m.source), weights.config_from_hf(json.loads(hf_config.read_text()),
                                                 str(hf_config)).replace(**numerics)
  raise ValueError(f"plan.preset: cannot tell the model's shape from model.source={m.source!r} "
                   "without loading it; set plan.preset (e.g. llama3_2_1b)")


def device_memory(config, tpu_slice: memory.TPUSlice | None) -> float | None:
  """Bytes per device to judge against: plan.device_memory_gib, else the slice's HBM, else the
  local accelerator's limit (CPU devices report none)."""
  if config.plan.device_memory_gib > 0:
    return config.plan.device_memory_gib * memory.GIB
  if tpu_slice is not None:
    return tpu_slice.hbm_gib * memory.GIB
  stats = jax.devices()[0].memory_stats()
  return float(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _as_dict(plan: memory.MemoryPlan, label: str, limit: float | None) -> dict:
  computed = {k: getattr(plan, k) for k in ("params", "opt_state", "grads", "batch", "activations_remat",
                                            "activations_no_remat", "sampler_weights", "kv_cache")}
  compiled = {name: None if c is None else dict(argument=c.argument, output=c.output, alias=c.alias,
                                                temp=c.temp, peak=c.peak, largest=c.largest,
                                                largest_what=c.largest_what, backend=c.backend)
              for name, c in (("remat", plan.compiled_remat), ("no_remat", plan.compiled_no_remat))}
  return dict(label=label, mesh=plan.mesh, devices=plan.devices, computed=computed,
              computed_peak=plan.computed_peak, compiled=compiled, peak=plan.peak,
              device_memory=limit, fits=None if not limit else plan.peak <= limit)


def run(config) -> dict:
  c = config.plan
  losses.import_loss_modules(config.loss_modules)
  name, cfg = model_config(config)
  shape = memory.StepShape(
      batch_size=c.batch_size or config.sft.batch_size, seq_len=c.seq_len or config.sft.seq_len,
      optim=config.sft.optim.to_dict(), sampler_batch=c.sampler_batch or config.sampler.batch_size,
      sampler_len=c.sampler_len or config.sampler.max_prompt_len + config.sampler.max_new_tokens,
      loss=config.sft.loss, loss_modules=config.loss_modules)
  specs = [s.strip() for s in c.meshes.split(";") if s.strip()]
  if specs:
    meshes = [memory.parse_mesh(s) for s in specs]
  else:
    local = sharding.resolve_mesh_shape(dict(config.mesh), jax.device_count())
    meshes, specs = [(local, None)], [",".join(f"{k}={v}" for k, v in local.items() if v > 1) or "1 device"]
  plans = []
  for spec, (mesh_shape, _) in tqdm(list(zip(specs, meshes)), desc="plan: meshes", unit="mesh"):
    log.info("plan: %s on %s%s", name, spec, " (computing and compiling)" if c.compile else "")
    plans.append(memory.plan_memory(cfg, mesh_shape, shape, compile=c.compile))
  limits = [device_memory(config, tpu_slice) for _, tpu_slice in meshes]
  n = cfg.num_params
  count = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
  print(f"plan: {name} ({count} parameters; params {cfg.param_dtype}, compute "
        f"{cfg.dtype}, remat {cfg.remat}), SFT batch {shape.batch_size} x {shape.seq_len}, optimizer "
        f"{shape.optim['name']}; sampler {shape.sampler_batch} rows x {shape.sampler_len} slots")
  print(memory.format_plans(plans, specs, limits))
  summary = dict(model=name, num_params=cfg.num_params, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                 remat=cfg.remat, batch_size=shape.batch_size, seq_len=shape.seq_len,
                 sampler_batch=shape.sampler_batch, sampler_len=shape.sampler_len,
                 meshes=[_as_dict(p, s, m) for p, s, m in zip(plans, specs, limits)])
  return common.finish("plan", summary)
