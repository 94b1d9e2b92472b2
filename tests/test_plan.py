"""The memory planner (train/memory.py, stage `plan`) on the tiny model: per-device bytes against
hand counts, the compiled step's arguments against the computed state, and the table for two
meshes. Tiny: vocab V=264, d D=64, L=2 layers, N=4 heads, K=2 kv heads of H=16, mlp F=128, fp32."""

import json

import pytest

from cai_jax.config import optim_section
from cai_jax.models.config import get_model_config
from cai_jax.train import memory

V, D, L, N, K, H, F = 264, 64, 2, 4, 2, 16, 128
F32 = 4


def _shape(**kw) -> memory.StepShape:
  return memory.StepShape(**{**dict(batch_size=16, seq_len=64, optim=optim_section(lr=1e-4).to_dict(),
                                    sampler_batch=8, sampler_len=80), **kw})


def _param_bytes(fsdp: int, tensor: int = 1) -> int:
  """Every weight matrix splits its `embed` dim over fsdp and its heads/mlp/vocab dim over
  tensor; the norms are replicated."""
  matrices = V * D + L * D * N * H + 2 * L * D * K * H + L * N * H * D + 3 * L * D * F
  norms = 2 * L * D + D
  return F32 * (matrices // (fsdp * tensor) + norms)


@pytest.mark.parametrize("spec, fsdp", [("fsdp=8", 8), ("data=2,fsdp=4", 4), ("fsdp=64", 64)])
def test_parameter_and_gradient_bytes_per_device(tiny_cfg, spec, fsdp):
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh(spec)[0], _shape(batch_size=64))
  assert plan.params == plan.grads == _param_bytes(fsdp)


def test_tensor_parallel_splits_the_other_dim(tiny_cfg):
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh("fsdp=2,tensor=2")[0], _shape())
  assert plan.params == _param_bytes(fsdp=2, tensor=2)


def test_adamw_state_is_two_moments_and_two_counters(tiny_cfg):
  # mu and nu sharded like the params; int32 step counts of Adam and of the lr schedule.
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh("data=2,fsdp=4")[0], _shape())
  assert plan.opt_state == 2 * _param_bytes(4) + 2 * 4


def test_gradient_accumulation_adds_a_param_shaped_buffer(tiny_cfg):
  mesh = memory.parse_mesh("fsdp=8")[0]
  plain = memory.computed_plan(tiny_cfg, mesh, _shape())
  accum = memory.computed_plan(tiny_cfg, mesh, _shape(optim=optim_section(grad_accum=4).to_dict()))
  assert accum.opt_state - plain.opt_state == _param_bytes(8) + 2 * 4  # + mini-step, step counters


def test_batch_and_kv_cache_per_device(tiny_cfg):
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh("data=2,tensor=4")[0], _shape(sampler_batch=6))
  rows = 16 // 2
  assert plan.batch == 4 * rows * 64 * 4  # tokens, positions, segment ids, loss mask: int32
  # keys + values [L, 3 rows, 80 slots, K, H]; 2 kv heads do not split over tensor=4
  assert plan.kv_cache == 2 * L * 3 * 80 * K * H * F32
  split = memory.computed_plan(tiny_cfg, memory.parse_mesh("data=2,tensor=2")[0], _shape(sampler_batch=6))
  assert split.kv_cache == plan.kv_cache // 2


def test_remat_keeps_one_block_input_per_layer(tiny_cfg):
  mesh, shape = memory.parse_mesh("fsdp=8")[0], _shape()
  two = memory.computed_plan(tiny_cfg.replace(remat=True), mesh, shape)
  four = memory.computed_plan(tiny_cfg.replace(remat=True, n_layers=4), mesh, shape)
  rows = 16 // 8
  assert four.activations_remat - two.activations_remat == 2 * rows * 64 * D * F32
  assert two.activations_no_remat > 10 * two.activations_remat
  assert two.activations == two.activations_remat  # the model's own setting picks the column


def test_sampler_weights_are_whole_per_data_shard_in_two_layouts(tiny_cfg):
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh("fsdp=8")[0], _shape())
  assert plan.sampler_weights == 2 * _param_bytes(1)  # the sample rules do not split `embed`


def test_a_mesh_larger_than_the_host_compiles_on_fake_devices(tiny_cfg):
  mesh = memory.parse_mesh("fsdp=16")[0]  # the tests have 8 devices
  compiled = memory.compiled_step(tiny_cfg, mesh, _shape())
  plan = memory.computed_plan(tiny_cfg, mesh, _shape())
  assert compiled.backend == "cpu, 16 fake devices"
  assert compiled.argument == plan.params + plan.opt_state + plan.batch + 4 + 8


def test_parse_mesh_reads_specs_and_slices():
  assert memory.parse_mesh("data=2, fsdp=4") == ({"data": 2, "fsdp": 4, "tensor": 1}, None)
  mesh, tpu = memory.parse_mesh("v5p-64")
  assert mesh == {"data": 2, "fsdp": 16, "tensor": 1} and tpu.hbm_gib == 95
  with pytest.raises(ValueError, match="plan.meshes: 'fsdp=two'"):
    memory.parse_mesh("fsdp=two")


def test_indivisible_batch_is_an_error(tiny_cfg):
  with pytest.raises(ValueError, match="a batch of 16 rows cannot be split over data x fsdp = 32"):
    memory.computed_plan(tiny_cfg, memory.parse_mesh("data=2,fsdp=16")[0], _shape())


def test_fits_compares_the_peak_with_device_memory(tiny_cfg):
  plan = memory.computed_plan(tiny_cfg, memory.parse_mesh("fsdp=8")[0], _shape())
  assert memory.fits(plan, 2 * plan.peak) == (f"yes (50% of {2 * plan.peak / memory.GIB:.1f} GiB, "
                                              "computed peak: no XLA temporaries)")
  assert memory.fits(plan, plan.peak / 2).startswith("NO (200% of")
  assert memory.fits(plan, None) == "no device memory given"


def test_validator_names_a_bad_mesh():
  from cai_jax.cli import load_config
  with pytest.raises(SystemExit, match="plan.meshes: 'fsdp:8'; expected 'axis=size,...'"):
    load_config(["--config=experiments/tiny.py", "--config.plan.meshes=fsdp=8;fsdp:8"])


def test_plan_stage_prints_a_table_for_two_meshes(capsys):
  from cai_jax.cli import load_config
  from cai_jax.stages import plan as plan_stage

  config = load_config(["--config=experiments/tiny.py", "--config.plan.meshes=fsdp=8;data=2,fsdp=4",
                        "--config.sft.batch_size=16", "--config.sft.seq_len=64",
                        "--config.plan.device_memory_gib=1.0"])
  summary = plan_stage.run(config)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("plan: tiny (0.1M parameters; params float32, compute float32")
  assert out[1] == "| MiB per device | fsdp=8 | data=2,fsdp=4 |"
  row = next(line for line in out if line.startswith("| parameters (computed)"))
  assert row == (f"| parameters (computed) | {_param_bytes(8) / 2**20:.2f} | "
                 f"{_param_bytes(4) / 2**20:.2f} |")
  assert json.loads(out[-1]) == json.loads(json.dumps(summary))
  step_counter, rng_key = 4, 8
  for entry, fsdp in zip(summary["meshes"], (8, 4)):
    computed, compiled = entry["computed"], entry["compiled"]["no_remat"]
    assert computed["params"] == _param_bytes(fsdp)
    # XLA's per-device arguments are exactly the computed state and batch; the state is donated.
    state = computed["params"] + computed["opt_state"] + step_counter + rng_key
    assert compiled["argument"] == state + computed["batch"] and compiled["alias"] == state
    assert 0 < compiled["largest"] <= compiled["temp"]
    assert entry["peak"] == compiled["peak"]  # experiments/tiny.py: remat off
    assert entry["fits"] is True and entry["device_memory"] == 2**30
