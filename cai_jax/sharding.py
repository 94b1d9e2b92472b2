"""Device meshes, logical-axis rules, and shardings derived from logical names.

Parameters name their axes logically (`embed`, `heads`, `mlp`, ...). A rule
table maps each logical name to a mesh axis (or a tuple of them, or None).
One closed vocabulary: an unknown logical name is an error, not a silent
replication. A dimension that a mesh axis does not divide is replicated
instead (the tiny test model has 2 kv heads; a mesh may have 4 tensor shards).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. `batch` is for activations / data.
TRAIN_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
}
# Sampling keeps whole weights per data shard (no fsdp gather per token).
SAMPLE_RULES: dict[str, Any] = {**TRAIN_RULES, "embed": None}

RULE_SETS = {"train": TRAIN_RULES, "sample": SAMPLE_RULES}


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> bool:
  """Starts multi-host JAX when asked to (the same program runs on every host).

  num_processes = 0 or 1: single process, nothing to do. num_processes = -1:
  let JAX detect the cluster (TPU pods, SLURM). Otherwise pass the coordinator
  "host:port", the number of processes and this process's id (GPU clusters,
  local multi-process tests). Returns whether distributed mode was started.
  """
  if num_processes in (0, 1):
    return False
  # Cross-process collectives on CPU (local multi-process tests, CPU clusters) need an
  # implementation; gloo is jax 0.10's default, set here for versions without one.
  if not jax.config.jax_cpu_collectives_implementation:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes == -1:
    jax.distributed.initialize()
  else:
    if not coordinator_address or not 0 <= process_id < num_processes:
      raise ValueError("distributed: with num_processes > 1, give coordinator_address "
                       f"(host:port) and 0 <= process_id < {num_processes}; got "
                       f"{coordinator_address!r}, process_id={process_id}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  log.info("jax.distributed: process %d of %d, %d global devices (%d local)", jax.process_index(),
           jax.process_count(), jax.device_count(), jax.local_device_count())
  return True


def resolve_mesh_shape(axes: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Replaces one -1 by whatever fills the devices; checks the product."""
  unknown = [k for k in axes if k not in MESH_AXES]
  if unknown:
    raise ValueError(f"mesh: unknown axis {unknown[0]!r}; expected axes among {MESH_AXES}")
  shape = {k: int(axes.get(k, 1)) for k in MESH_AXES}
  fill = [k for k, v in shape.items() if v == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {fill}")
  known = math.prod(v for v in shape.values() if v != -1)
  if fill:
    if n_devices % known:
      raise ValueError(f"mesh: {n_devices} devices are not divisible by the fixed axes {shape}")
    shape[fill[0]] = n_devices // known
  if math.prod(shape.values()) != n_devices:
    raise ValueError(f"mesh: axes {shape} use {math.prod(shape.values())} devices, "
                     f"but {n_devices} are present")
  return shape


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A Mesh over all (global) devices with axes (data, fsdp, tensor)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(axes or {"data": -1}, len(devices))
  dims = tuple(shape[k] for k in MESH_AXES)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # non-TPU topologies the helper does not know: plain row-major order
    grid = np.asarray(devices).reshape(dims)
  return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, Any]) -> P:
  """Maps logical axis names to a PartitionSpec, replicating indivisible dims."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    target = rules[name]
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
    size = math.prod(mesh.shape[t] for t in targets)
    if not targets or dim % size:
      spec.append(None)
      continue
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else targets)
  return P(*spec)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] | str = "train"):
  """Pure dict of NamedShardings for an nnx state whose Variables carry `axes`."""
  rules = RULE_SETS[rules] if isinstance(rules, str) else rules

  def one(var):
    axes = var.get_metadata().get("axes")
    if axes is None:
      raise ValueError(f"parameter of shape {var.shape} has no logical `axes` metadata")
    return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules))

  return nnx.to_pure_dict(jax.tree.map(one, abstract_state, is_leaf=_is_var))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Mapping[str, Any] | str = "train") -> NamedSharding:
  """Sharding for a data array whose leading axis is the batch."""
  rules = RULE_SETS[rules] if isinstance(rules, str) else rules
  batch_axes = rules["batch"]
  batch_axes = tuple(a for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes)
                     if mesh.shape.get(a, 1) > 1)
  lead = None if not batch_axes else batch_axes[0] if len(batch_axes) == 1 else batch_axes
  return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, rules: Mapping[str, Any] | str = "train"):
  """Places host arrays of a batch (leading axis = batch) onto the mesh.

  In multi-host runs each process passes its own slice; the global array is
  assembled with `make_array_from_process_local_data`. A host holding the whole
  global batch uses `shard_global_batch` instead.
  """
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim, rules) if x.ndim else replicated(mesh)
    if jax.process_count() > 1:
      return jax.make_array_from_process_local_data(sharding, x)
    return jax.device_put(x, sharding)
  return jax.tree.map(put, dict(batch))


def shard_global_batch(batch: Mapping[str, Any], mesh: Mesh, rules: Mapping[str, Any] | str = "train"):
  """Places a batch that every process holds whole (the same global rows, in the same order on
  every host) onto the mesh: each process transfers only the rows its own devices hold, so
  the result is the one-process batch whatever the number of hosts."""
  if jax.process_count() == 1:  # the whole batch is this process's own: one transfer
    return shard_batch(batch, mesh, rules)

  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim, rules) if x.ndim else replicated(mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, dict(batch))


def to_host(tree):
  """numpy copies of a pytree of arrays, whole on every process: an array whose rows live
  partly on other hosts (batch-sharded over a multi-host mesh) comes by an all-gather; one
  this process holds whole (a single process, or a mesh of its own devices) is copied."""
  from jax.experimental import multihost_utils

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(get, tree)


def init_sharded(model_fn, mesh: Mesh, rules: Mapping[str, Any] | str = "train"):
  """Builds a model directly into its shardings: eval_shape -> shardings -> jit(init).

  `model_fn()` constructs the nnx module (its rngs inside). Returns
  (graphdef, params as a pure dict of sharded arrays, param shardings).
  """
  abstract = nnx.eval_shape(model_fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)

  @jax.jit
  def init():
    return nnx.to_pure_dict(nnx.split(model_fn())[1])

  params = jax.jit(init, out_shardings=shardings)()
  return graphdef, params, shardings


def reshard(tree, shardings):
  """Moves a pytree of arrays onto the given shardings (e.g. another mesh)."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
