"""SFT (SL-CAI) of the embedded SmolLM2-135M-Instruct on the `sl-data` output.

  python -m cai_jax sft --config experiments/sft.py                 # reads runs/sl_cai/sl_data/sl_cai.jsonl
  python -m cai_jax sft --config experiments/sft.py:quick           # runs/sl_cai_quick data, 12 steps, CPU
  python -m cai_jax sft --config experiments/sft.py --config.sft.rounds=last --config.sft.helpful_fraction=0.4

Rerunning the same command resumes from the newest checkpoint under <workdir>/sft/checkpoints;
the trained model is exported to <workdir>/sft/hf (HF safetensors, loads as model.source).
"""

from cai_jax.config import ConfigDict, experiment_config

VARIANTS = ("", "quick")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/sft"
  config.model.source = "embedded"
  config.model.remat = True  # fp32 step at 8 x 256: 6.3 GB of XLA temporaries without remat, 1.8 GB with
  config.sft.data = "runs/sl_cai/sl_data/sl_cai.jsonl"
  config.sft.seq_len = 512
  config.sft.batch_size = 8
  config.sft.num_steps = 200
  config.sft.optim.lr = 2e-5
  config.sft.optim.warmup_steps = 10
  if variant == "quick":
    config.workdir = "runs/sft_quick"
    config.sft.data = "runs/sl_cai_quick/sl_data/sl_cai.jsonl"
    config.sft.seq_len = 384
    config.sft.batch_size = 4
    config.sft.num_steps = 12
    config.sft.eval_fraction = 0.0  # a handful of records: train on all of them
    config.sft.checkpoint_every = 6
    config.sft.log_every = 1
    config.sft.optim.lr = 5e-5
    config.sft.optim.warmup_steps = 2
  return config
