"""sft_step: sharded == unsharded, and it learns."""

import jax
import numpy as np
import pytest
from flax import nnx

from cai_jax import sharding
from cai_jax.models import Transformer
from cai_jax.train import sft
from cai_jax.config import optim_section
from cai_jax.train.state import init_train_state, make_optimizer


def _batch(seed: int = 0, B: int = 8, T: int = 24, V: int = 264):
  """Two packed segments per row: prompt (masked) then response (trained), positions reset."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
  positions = np.zeros((B, T), np.int32)
  segment_ids = np.zeros((B, T), np.int32)
  loss_mask = np.zeros((B, T), np.int32)
  for b in range(B):
    cut = 10 + b % 3
    end = T - b % 4  # trailing padding (segment 0)
    for seg, (lo, hi) in enumerate([(0, cut), (cut, end)], start=1):
      positions[b, lo:hi] = np.arange(hi - lo)
      segment_ids[b, lo:hi] = seg
      loss_mask[b, lo + 4:hi] = 1  # 4 prompt tokens, then the response
  return dict(tokens=tokens, positions=positions, segment_ids=segment_ids, loss_mask=loss_mask)


def _run(cfg, mesh, batches, optim):
  graphdef, params, pshard = sharding.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  tx = make_optimizer(optim, num_steps=len(batches))
  state, shardings = init_train_state(params, pshard, tx, jax.random.key(0), mesh)
  step = sft.make_sft_step(graphdef=graphdef, tx=tx, state_shardings=shardings, mesh=mesh)
  losses = []
  for b in batches:
    state, m = step(state, sharding.shard_batch(b, mesh))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params)


OPTIM = optim_section(lr=1e-2, eps=1e-6, weight_decay=0.01, grad_clip=1.0, warmup_steps=1,
                      schedule="cosine")


@pytest.fixture(scope="module")
def unsharded_run():
  from cai_jax.models import get_model_config
  batches = [_batch(0), _batch(1)]
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  return batches, _run(get_model_config("tiny"), mesh, batches, OPTIM)


@pytest.mark.parametrize("axes", [{"fsdp": 8}, {"data": 2, "tensor": 4},
                                  {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_steps_match_the_unsharded_steps(tiny_cfg, axes, unsharded_run):
  batches, (ref_losses, ref_params) = unsharded_run
  losses, params = _run(tiny_cfg, sharding.make_mesh(axes), batches, OPTIM)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_of_two_halves_equals_one_full_batch(tiny_cfg):
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  full = _batch(3, B=8)
  halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
  # Equal response-token counts per half make "mean of half means" == "full mean".
  assert halves[0]["loss_mask"][:, 1:].sum() == halves[1]["loss_mask"][:, 1:].sum()
  sgd = optim_section(name="sgd", lr=0.5, grad_clip=0.0)
  _, one = _run(tiny_cfg, mesh, [full], sgd)
  _, two = _run(tiny_cfg, mesh, halves, optim_section(name="sgd", lr=0.5, grad_clip=0.0, grad_accum=2))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_step_memorises_a_fixed_batch(tiny_cfg):
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  batch = _batch(7)
  losses, _ = _run(tiny_cfg, mesh, [batch] * 40, optim_section(lr=3e-3, warmup_steps=0))
  assert losses[0] > 5.0  # ~ln(264) = 5.58 at init
  assert losses[-1] < 0.1 * losses[0], losses[::5]


def test_bf16_compute_with_fp32_master_weights(tiny_cfg, unsharded_run):
  batches, (ref_losses, _) = unsharded_run
  cfg = tiny_cfg.replace(dtype="bfloat16", remat=True)
  losses, params = _run(cfg, sharding.make_mesh({"data": 8}), batches, OPTIM)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-2)  # bf16 matmuls: close, not equal
