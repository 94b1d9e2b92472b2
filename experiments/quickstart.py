"""The whole CAI pipeline on the embedded SmolLM2-135M-Instruct, sized for 2 CPU cores.

  python -m cai_jax pipeline --config experiments/quickstart.py
  python -m cai_jax pipeline --config experiments/quickstart.py:tiny   # random tiny model, ~1 min

sl-data (critique -> revision on our red-team prompts) -> sft -> feedback (AI
preference labels from (A)/(B) log-probs) -> rm (Bradley-Terry) -> ppo (KL to
the SFT policy) -> eval-hhh (a slice of the paper's 438 HHH comparisons, when
../shared/data is present) -> report (<workdir>/report.md + plots/).

Every number is tiny on purpose (a few prompts, a few steps): this run shows the
machinery end to end, it does not reproduce the paper. Scale up with overrides,
e.g. --config.sl_data.n_prompts=-1 --config.sft.num_steps=1000.
"""

import pathlib

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "tiny")

HHH = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/cai_paper/evals/438HHHEvaluations.jsonl"


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/quickstart"
  config.model.source = "embedded"
  config.model.system_prompt = ""
  config.sampler.temperature = 1.0
  config.sampler.max_new_tokens = 48
  config.sampler.max_prompt_len = 1024
  config.sampler.batch_size = 8

  c = config.sl_data
  c.n_prompts, c.n_helpful, c.n_rounds, c.n_few_shot = 8, 4, 2, 1

  c = config.sft
  c.seq_len, c.batch_size, c.num_steps = 256, 4, 8
  c.eval_every, c.checkpoint_every, c.log_every = 4, 4, 1
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 2e-5, 2, "constant"

  c = config.feedback
  c.n_prompts, c.n_few_shot = 6, 1

  c = config.rm
  c.batch_size, c.num_steps, c.max_len = 4, 8, 256
  c.eval_every, c.checkpoint_every, c.eval_fraction = 4, 4, 0.25
  c.optim.lr = 1e-5

  c = config.ppo
  c.num_steps, c.rollout_batch_size, c.minibatch_size, c.sample_batch_size = 3, 8, 4, 8
  c.max_prompt_len, c.max_new_tokens = 128, 32
  c.checkpoint_every = 2
  c.prompts = "red_team"

  config.eval.hhh = str(HHH)
  config.eval.limit = 24
  config.pipeline.stages = "" if HHH.exists() else "sl-data,sft,feedback,rm,ppo"

  if variant == "tiny":
    config.workdir = "runs/quickstart_tiny"
    use_tiny_model(config)
    config.sampler.max_new_tokens = 16
    config.sampler.max_prompt_len = 512
    config.sl_data.n_prompts, config.sl_data.n_helpful = 4, 2
    config.sft.seq_len = 512
    config.feedback.n_prompts = 4
    config.rm.max_len = 512
    config.ppo.max_new_tokens = 8
    config.eval.limit = 4
  return config
