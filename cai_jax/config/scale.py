"""Config section: the memory planner (`plan`)."""

from __future__ import annotations

import re

from cai_jax.config.core import ConfigDict, section, validator

# "data=2,fsdp=4" (axes among data, fsdp, tensor) or a TPU slice name such as "v5e-16".
_MESH_SPEC = re.compile(r"^((data|fsdp|tensor)=[1-9]\d*)(,(data|fsdp|tensor)=[1-9]\d*)*$")
_SLICE_NAME = re.compile(r"^v\d+[a-z]*-\d+$")


@section("plan")
def _plan() -> ConfigDict:
  # Stage `plan` (stages/plan.py -> train/memory.py): per-device bytes of the SFT step and the
  # sampler for config.model on one or more meshes, without allocating the model.
  return ConfigDict(dict(
      # Per device; 0 = a TPU slice's HBM for slice-named meshes, else the local accelerator's
      # limit when it reports one (none on CPU: then no fits/does-not-fit verdict).
      device_memory_gib=0.0,
      preset="",  # model shape; "" = model.preset, or the embedded SmolLM2-135M's shape
      # ";"-separated meshes, each "axis=size,..." over data/fsdp/tensor or a TPU slice name
      # from tpu/slices.tsv (its mesh preset and HBM): "fsdp=8;data=2,fsdp=4;v5e-16".
      # "" = config.mesh over this process's devices.
      meshes="",
      batch_size=0,  # rows per SFT step (global); 0 = sft.batch_size
      seq_len=0,  # 0 = sft.seq_len
      sampler_batch=0,  # rows per sampler call; 0 = sampler.batch_size
      sampler_len=0,  # KV-cache slots; 0 = sampler.max_prompt_len + sampler.max_new_tokens
      # Lower + compile the step per mesh (remat on and off) for XLA's own numbers; with more
      # devices than this process has, on that many fake CPU devices in a subprocess.
      compile=True,
  ))


@validator("plan")
def _validate_plan(c: ConfigDict) -> None:
  if c.device_memory_gib < 0:
    raise ValueError(f"plan.device_memory_gib: must be >= 0 (0 = auto), got {c.device_memory_gib}")
  for field in ("batch_size", "seq_len", "sampler_batch", "sampler_len"):
    if c[field] < 0:
      raise ValueError(f"plan.{field}: must be >= 0 (0 = from the config), got {c[field]}")
  if c.preset:
    from cai_jax.models.config import PRESETS
    if c.preset not in PRESETS:
      raise ValueError(f"plan.preset: unknown preset {c.preset!r}; expected one of {sorted(PRESETS)}")
  for spec in (s.strip() for s in c.meshes.split(";") if s.strip()):
    if not (_MESH_SPEC.match(spec.replace(" ", "")) or _SLICE_NAME.match(spec)):
      raise ValueError(f"plan.meshes: {spec!r}; expected 'axis=size,...' over data, fsdp, tensor "
                       "(e.g. 'data=2,fsdp=4') or a TPU slice name (e.g. 'v5e-16')")
