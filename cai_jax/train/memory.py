"""Memory planner: per-device bytes of the SFT step and the sampler on a mesh, nothing allocated.

Two kinds of numbers, and the table says which is which:
  * computed -- arithmetic on `jax.eval_shape` outputs and the shardings the step
    uses, on a `jax.sharding.AbstractMesh` (so any device count plans here):
    parameters, optimizer state and gradients (exact: shard shapes of the
    train-rule NamedShardings), the batch, activations saved for the backward pass
    (the residuals of `jax.vjp` at one device's share of the batch, minus the
    parameters themselves; divided over the batch axes only, so an upper bound when
    tensor > 1), and the sampler's weights (sample rules, two layouts: stacked and
    the per-layer decode copy) and KV cache;
  * compiled -- XLA's `memory_analysis()` of the real jitted step
    (`train.sft.make_sft_step`), lowered from ShapeDtypeStructs that carry the
    mesh's NamedShardings and compiled with remat on and off: per-device arguments,
    outputs, donated (aliased) bytes, temporaries, and the largest array the
    compiled program makes. Compiling needs the mesh's devices: with fewer here,
    the compile runs in a subprocess on that many fake CPU devices
    (--xla_force_host_platform_device_count), so those numbers are XLA:CPU's
    partitioning and buffer assignment -- the sharding decisions are the SPMD
    partitioner's on any backend, the fusion and scheduling are not a TPU's, and
    XLA:CPU does bf16 arithmetic in f32, so with bf16 compute its temporaries run up
    to twice what an accelerator's would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh

from cai_jax import sharding
from cai_jax.losses import get_loss, import_loss_modules
from cai_jax.models.config import ModelConfig, to_dtype
from cai_jax.models.transformer import Transformer
from cai_jax.train import sft
from cai_jax.train.state import abstract_state, make_optimizer, state_shardings

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class TPUSlice:
  """A Cloud TPU slice: what `gcloud compute tpus tpu-vm create` takes and a mesh preset for it.

  tpu/slices.tsv holds the same rows for the shell scripts (tests/test_tpu_scripts.py
  checks that they agree)."""

  name: str
  accelerator_type: str
  runtime_version: str
  devices: int  # JAX devices = chips (v4 and v5p megacore: one device per chip)
  hbm_gib: float  # per device
  data: int
  fsdp: int
  tensor: int

  @property
  def mesh(self) -> dict[str, int]:
    return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


SLICES: dict[str, TPUSlice] = {s.name: s for s in (
    TPUSlice("v4-8", "v4-8", "tpu-ubuntu2204-base", 4, 32, 1, 4, 1),
    TPUSlice("v4-32", "v4-32", "tpu-ubuntu2204-base", 16, 32, 1, 16, 1),
    TPUSlice("v5e-8", "v5litepod-8", "v2-alpha-tpuv5-lite", 8, 16, 1, 8, 1),
    TPUSlice("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite", 16, 16, 1, 16, 1),
    TPUSlice("v5e-64", "v5litepod-64", "v2-alpha-tpuv5-lite", 64, 16, 4, 16, 1),
    TPUSlice("v5p-8", "v5p-8", "v2-alpha-tpuv5", 4, 95, 1, 4, 1),
    TPUSlice("v5p-64", "v5p-64", "v2-alpha-tpuv5", 32, 95, 2, 16, 1),
    TPUSlice("v6e-8", "v6e-8", "v2-alpha-tpuv6e", 8, 32, 1, 8, 1),
)}


def parse_mesh(spec: str) -> tuple[dict[str, int], TPUSlice | None]:
  """"data=2,fsdp=4" -> ({"data": 2, "fsdp": 4, "tensor": 1}, None); a slice name
  ("v5e-16") -> (its preset mesh, the slice). Raises ValueError("plan.meshes: ...")."""
  spec = spec.strip()
  if spec in SLICES:
    return SLICES[spec].mesh, SLICES[spec]
  shape = {a: 1 for a in sharding.MESH_AXES}
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    axis, eq, size = part.partition("=")
    if not eq or axis.strip() not in shape or not size.strip().isdigit() or int(size) < 1:
      raise ValueError(f"plan.meshes: {spec!r}; expected axis=size pairs over {sharding.MESH_AXES} "
                       f"(e.g. 'data=2,fsdp=4') or a TPU slice among {sorted(SLICES)}")
    shape[axis.strip()] = int(size)
  return shape, None


@dataclasses.dataclass(frozen=True)
class StepShape:
  """The global sizes planned for: one SFT step and one sampler call."""

  batch_size: int  # rows per SFT step
  seq_len: int
  optim: Mapping[str, Any]  # train.state.make_optimizer's settings
  sampler_batch: int = 8  # rows per sampler call
  sampler_len: int = 640  # KV-cache slots: prompt + new tokens
  loss: str = "sft_ce"
  loss_modules: str = ""  # imported before the loss is looked up (config.loss_modules)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """XLA's memory analysis of one compiled SFT step, bytes per device."""

  argument: int
  output: int
  alias: int  # donated argument bytes reused for outputs
  temp: int
  largest: int  # the largest array the compiled program produces (not a parameter)
  largest_what: str  # its shape and the JAX op that made it
  backend: str  # e.g. "cpu, 64 fake devices"

  @property
  def peak(self) -> int:
    """Live bytes at the worst point, as XLA counts them: inputs + outputs - donated + temporaries."""
    return self.argument + self.output - self.alias + self.temp


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Per-device bytes of one model on one mesh (see the module docstring for computed/compiled)."""

  mesh: dict[str, int]
  remat: bool  # the model's setting: which activations/compile the peak uses
  params: int
  opt_state: int
  grads: int
  batch: int
  activations_remat: int
  activations_no_remat: int
  sampler_weights: int
  kv_cache: int
  compiled_remat: CompiledStep | None = None
  compiled_no_remat: CompiledStep | None = None

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def activations(self) -> int:
    return self.activations_remat if self.remat else self.activations_no_remat

  @property
  def computed_peak(self) -> int:
    """Params + optimizer state + gradients + batch + saved activations."""
    return self.params + self.opt_state + self.grads + self.batch + self.activations

  @property
  def compiled(self) -> CompiledStep | None:
    return self.compiled_remat if self.remat else self.compiled_no_remat

  @property
  def peak(self) -> int:
    """The compiled peak when compiled, else the computed one."""
    return self.compiled.peak if self.compiled else self.computed_peak


# ----------------------------------------------------------------------------- computed


def _nbytes(shape, dtype) -> int:
  try:
    itemsize = np.dtype(dtype).itemsize
  except TypeError:  # a typed PRNG key: two uint32 words
    itemsize = 8
  return math.prod(shape) * itemsize


def sharded_bytes(tree, shardings) -> int:
  """Bytes one device holds of a pytree of arrays / ShapeDtypeStructs under `shardings`."""
  sizes = jax.tree.map(lambda x, s: _nbytes(s.shard_shape(x.shape), x.dtype), tree, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def abstract_model(cfg: ModelConfig) -> tuple[Any, nnx.State]:
  """(graphdef, abstract nnx state) of the Transformer; nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def abstract_mesh(mesh_shape: Mapping[str, int]) -> AbstractMesh:
  return AbstractMesh(tuple(int(mesh_shape.get(a, 1)) for a in sharding.MESH_AXES), sharding.MESH_AXES)


def batch_shards(mesh_shape: Mapping[str, int]) -> int:
  """Devices the batch is split over (the `batch` rule: data x fsdp)."""
  return int(mesh_shape.get("data", 1)) * int(mesh_shape.get("fsdp", 1))


def _residuals(cfg: ModelConfig, rows: int, seq_len: int, loss: str) -> list:
  """ShapeDtypeStructs of what the backward pass of the loss keeps (the jax.vjp closure's leaves)."""
  graphdef, state = abstract_model(cfg)
  batch = {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.int32) for k in sft.BATCH_KEYS}
  loss_fn = get_loss(loss)

  def residuals(p, b):
    def total(q):
      return loss_fn(sft.lm_outputs(graphdef, q, b), b, {}).total
    return jax.vjp(total, p)[1]

  return jax.tree.leaves(jax.eval_shape(residuals, nnx.to_pure_dict(state), batch))


@functools.lru_cache(maxsize=32)
def saved_activation_bytes(cfg: ModelConfig, rows: int, seq_len: int, loss: str = "sft_ce") -> int:
  """Bytes the backward pass keeps from the forward of `rows` x `seq_len` tokens.

  The residuals of `jax.vjp` of the loss, from eval_shape, less the parameters
  themselves (kept, not copied). A residual is taken for a parameter when it is
  shaped like one and does not grow with the batch (traced again at twice the rows),
  so an activation that happens to share a weight's shape still counts.
  """
  once, twice = _residuals(cfg, rows, seq_len, loss), _residuals(cfg, 2 * rows, seq_len, loss)
  if len(once) != len(twice):
    raise RuntimeError("plan: the residual tree changed with the batch size; cannot tell "
                       "activations from parameters")
  _, state = abstract_model(cfg)
  param_shapes = {(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(nnx.to_pure_dict(state))}
  return sum(_nbytes(a.shape, a.dtype) for a, b in zip(once, twice)
             if a.shape != b.shape or (tuple(a.shape), np.dtype(a.dtype)) not in param_shapes)


def computed_plan(cfg: ModelConfig, mesh_shape: Mapping[str, int], shape: StepShape) -> MemoryPlan:
  """The arithmetic half of a plan (no compile)."""
  mesh_shape = {a: int(mesh_shape.get(a, 1)) for a in sharding.MESH_AXES}
  shards = batch_shards(mesh_shape)
  if shape.batch_size % shards:
    raise ValueError(f"plan: a batch of {shape.batch_size} rows cannot be split over data x fsdp = "
                     f"{shards} devices of mesh {mesh_shape}; expected a multiple of {shards}")
  mesh = abstract_mesh(mesh_shape)
  _, state = abstract_model(cfg)
  params = nnx.to_pure_dict(state)
  p_shard = sharding.param_shardings(state, mesh, "train")
  tx = make_optimizer(shape.optim, num_steps=1000)
  train_state = abstract_state(params, tx, jax.random.key(0))
  s_shard = state_shardings(train_state, p_shard, mesh)
  rows = shape.batch_size // shards
  kv_split = mesh_shape["tensor"] if cfg.n_kv_heads % mesh_shape["tensor"] == 0 else 1
  kv_rows = -(-shape.sampler_batch // shards)
  kv = (2 * cfg.n_layers * kv_rows * shape.sampler_len * (cfg.n_kv_heads // kv_split) * cfg.head_dim
        * np.dtype(to_dtype(cfg.dtype)).itemsize)
  return MemoryPlan(
      mesh=mesh_shape, remat=cfg.remat,
      params=sharded_bytes(params, p_shard),
      opt_state=sharded_bytes(train_state.opt_state, s_shard.opt_state),
      grads=sharded_bytes(params, p_shard),
      batch=len(sft.BATCH_KEYS) * rows * shape.seq_len * 4,
      activations_remat=saved_activation_bytes(cfg.replace(remat=True), rows, shape.seq_len, shape.loss),
      activations_no_remat=saved_activation_bytes(cfg.replace(remat=False), rows, shape.seq_len,
                                                  shape.loss),
      sampler_weights=2 * sharded_bytes(params, sharding.param_shardings(state, mesh, "sample")),
      kv_cache=int(kv))


# ----------------------------------------------------------------------------- compiled

# One HLO instruction with an array result: name, element type, dims, opcode.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\(")
_NOT_NEW = {"parameter", "get-tuple-element", "bitcast", "constant", "tuple", "reshape"}
_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
              "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def largest_array(hlo_text: str) -> tuple[int, str]:
  """(bytes, description) of the largest array a compiled HLO module materialises.

  Fusion bodies are skipped (their intermediates live in registers, not buffers),
  and so are parameters and views of existing buffers.
  """
  fused = set(re.findall(r"\bfusion\(.*?calls=%?([\w.\-]+)", hlo_text))
  best, what, skip = 0, "", False
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$", line)
    if header and not line.startswith(" "):
      skip = header.group(1) in fused
      continue
    m = _INSTRUCTION.match(line)
    if skip or not m or m.group(4) in _NOT_NEW:
      continue
    if m.group(2) not in _HLO_BYTES:
      continue
    size = math.prod(int(d) for d in m.group(3).split(",") if d) * _HLO_BYTES[m.group(2)]
    if size > best:
      op = re.search(r'op_name="([^"]*)"', line)
      where = "/".join(op.group(1).split("/")[-2:]) if op else m.group(4)
      best, what = size, f"{m.group(2)}[{m.group(3)}] {where}"
  return best, what


def compile_sft_step(cfg: ModelConfig, mesh: Mesh, shape: StepShape, backend: str = "") -> CompiledStep:
  """Lowers and compiles the SFT step for `mesh` from ShapeDtypeStructs; reads its memory."""
  import_loss_modules(shape.loss_modules)
  graphdef, state = abstract_model(cfg)
  p_shard = sharding.param_shardings(state, mesh, "train")
  attach = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
  params = jax.tree.map(attach, nnx.to_pure_dict(state), p_shard)
  tx = make_optimizer(shape.optim, num_steps=1000)
  train_state = abstract_state(params, tx, jax.random.key(0))
  s_shard = state_shardings(train_state, p_shard, mesh)
  train_state = jax.tree.map(attach, train_state, s_shard)
  step = sft.make_sft_step(graphdef=graphdef, tx=tx, state_shardings=s_shard, mesh=mesh, loss=shape.loss)
  batch = {k: jax.ShapeDtypeStruct((shape.batch_size, shape.seq_len), jnp.int32, sharding=s)
           for k, s in sft.batch_shardings(mesh).items()}
  compiled = step.lower(train_state, batch).compile()
  m = compiled.memory_analysis()
  largest, what = largest_array(compiled.as_text())
  return CompiledStep(argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
                      alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
                      largest=largest, largest_what=what,
                      backend=backend or f"{mesh.devices.flat[0].platform}, {mesh.size} device"
                      + ("s" if mesh.size > 1 else ""))


def _with_device_count(xla_flags: str, n: int) -> str:
  kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={n}"])


def compiled_step(cfg: ModelConfig, mesh_shape: Mapping[str, int], shape: StepShape) -> CompiledStep:
  """compile_sft_step on this process's devices when there are enough, else on as many fake
  CPU devices in a subprocess (one JSON request on stdin, one JSON answer on stdout)."""
  n = math.prod(mesh_shape.values())
  if jax.device_count() >= n:
    return compile_sft_step(cfg, sharding.make_mesh(mesh_shape, jax.devices()[:n]), shape)
  request = dict(cfg=dataclasses.asdict(cfg), mesh=dict(mesh_shape),
                 shape=dict(dataclasses.asdict(shape), optim=dict(shape.optim)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=_with_device_count(os.environ.get("XLA_FLAGS", ""), n))
  out = subprocess.run([sys.executable, "-c", "from cai_jax.train import memory; memory.compile_worker()"],
                       input=json.dumps(request), capture_output=True, text=True, env=env, check=False)
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
  if out.returncode or not lines:
    raise RuntimeError(f"plan: compiling on {n} fake CPU devices failed (rc {out.returncode}):\n"
                       f"{out.stderr[-3000:]}")
  return CompiledStep(**json.loads(lines[-1]))


def compile_worker() -> None:
  """The subprocess side of `compiled_step`."""
  request = json.loads(sys.stdin.read())
  cfg = ModelConfig(**request["cfg"])
  shape = StepShape(**request["shape"])
  n = math.prod(request["mesh"].values())
  mesh = sharding.make_mesh(request["mesh"], jax.devices()[:n])
  print(json.dumps(dataclasses.asdict(compile_sft_step(cfg, mesh, shape, f"cpu, {n} fake devices"))))


def plan_memory(cfg: ModelConfig, mesh_shape: Mapping[str, int], shape: StepShape,
                compile: bool = True) -> MemoryPlan:
  """Computed bytes, plus the compiled step with remat on and off when `compile`."""
  plan = computed_plan(cfg, mesh_shape, shape)
  if not compile:
    return plan
  return dataclasses.replace(plan, compiled_remat=compiled_step(cfg.replace(remat=True), plan.mesh, shape),
                             compiled_no_remat=compiled_step(cfg.replace(remat=False), plan.mesh, shape))


# ----------------------------------------------------------------------------- the table


def fits(plan: MemoryPlan, device_memory: float | None) -> str:
  """'yes (54% of 16.0 GiB)' / 'NO (...)' / 'no device memory given' (the compiled peak when
  there is one, else the computed peak, which the verdict then says)."""
  if not device_memory:
    return "no device memory given"
  share = plan.peak / device_memory
  basis = "" if plan.compiled else ", computed peak: no XLA temporaries"
  return f"{'yes' if share <= 1 else 'NO'} ({100 * share:.0f}% of {device_memory / GIB:.1f} GiB{basis})"


def format_plans(plans: list[MemoryPlan], labels: list[str], device_memory: list[float | None]) -> str:
  """A markdown table: one column per mesh, GiB per device, each row marked computed/compiled."""
  def compiled(p: MemoryPlan, remat: bool, field: str) -> int | None:
    c = p.compiled_remat if remat else p.compiled_no_remat
    return None if c is None else getattr(c, field)

  rows = [
      ("parameters (computed)", [p.params for p in plans]),
      ("optimizer state (computed)", [p.opt_state for p in plans]),
      ("gradients (computed)", [p.grads for p in plans]),
      ("batch (computed)", [p.batch for p in plans]),
      ("activations saved, remat (computed)", [p.activations_remat for p in plans]),
      ("activations saved, no remat (computed)", [p.activations_no_remat for p in plans]),
      ("peak, computed: all of the above at the configured remat", [p.computed_peak for p in plans]),
      ("XLA arguments: state + batch (compiled)", [compiled(p, True, "argument") for p in plans]),
      ("XLA temporaries, remat (compiled)", [compiled(p, True, "temp") for p in plans]),
      ("XLA temporaries, no remat (compiled)", [compiled(p, False, "temp") for p in plans]),
      ("largest temporary, remat (compiled)", [compiled(p, True, "largest") for p in plans]),
      ("peak, compiled: args + outputs - donated + temps, configured remat",
       [p.compiled.peak if p.compiled else None for p in plans]),
      ("sampler weights, 2 layouts (computed)", [p.sampler_weights for p in plans]),
      ("sampler KV cache (computed)", [p.kv_cache for p in plans]),
  ]
  biggest = max((v for _, values in rows for v in values if v is not None), default=0)
  unit, scale = ("GiB", GIB) if biggest >= GIB else ("MiB", 1 << 20)

  def size(b: int | None) -> str:
    return "-" if b is None else f"{b / scale:.2f}"

  out = [f"| {unit} per device | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
  out += [f"| {name} | " + " | ".join(size(v) for v in values) + " |" for name, values in rows]
  out.append("| fits the SFT step (peak vs device memory) | "
             + " | ".join(fits(p, m) for p, m in zip(plans, device_memory)) + " |")
  for label, p in zip(labels, plans):
    if p.compiled_remat:
      out.append(f"{label}: largest temporary {p.compiled_remat.largest_what} "
                 f"({size(p.compiled_remat.largest)} {unit}); compiled on {p.compiled_remat.backend}")
  return "\n".join(out)
