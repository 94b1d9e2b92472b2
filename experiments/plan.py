"""Memory plans: the 135M SFT step of experiments/sft.py, and 1B- / 8B-shaped models on pod meshes.

  python -m cai_jax plan --config experiments/plan.py         # SmolLM2-135M, fp32, 8 x 512, remat, 1 device
  python -m cai_jax plan --config experiments/plan.py:1b      # llama3_2_1b shape, bf16 compute, 3 meshes
  python -m cai_jax plan --config experiments/plan.py:8b      # llama3_8b shape, bf16 compute, 3 meshes
  python -m cai_jax plan --config experiments/plan.py:8b --config.plan.meshes=v5p-64 \
      --config.plan.compile=False                              # arithmetic only: seconds

Nothing is allocated: shapes come from eval_shape and the step is compiled from
ShapeDtypeStructs (meshes larger than this machine's device count compile on as many
fake CPU devices in a subprocess; see cai_jax/train/memory.py).
"""

from cai_jax.config import ConfigDict, experiment_config

VARIANTS = ("", "1b", "8b")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/plan"
  # The SFT step of experiments/sft.py (the shape measured against in the README).
  config.model.source = "embedded"
  config.model.remat = True
  config.sft.seq_len = 512
  config.sft.batch_size = 8
  config.sampler.batch_size = 8
  config.sampler.max_prompt_len = 512
  config.sampler.max_new_tokens = 128
  if variant in ("1b", "8b"):
    config.plan.preset = "llama3_2_1b" if variant == "1b" else "llama3_8b"
    config.model.dtype = "bfloat16"  # fp32 master weights and Adam moments, bf16 compute
    config.sft.seq_len = 2048
    config.sft.batch_size = 32 if variant == "1b" else 64
    config.sampler.batch_size = 64
    config.sampler.max_prompt_len = 1024
    config.sampler.max_new_tokens = 512
    # 8 fake devices two ways, and a pod slice (its mesh preset and HBM from tpu/slices.tsv).
    config.plan.meshes = "fsdp=8;data=2,fsdp=4;" + ("v5e-16" if variant == "1b" else "v5p-64")
  return config
