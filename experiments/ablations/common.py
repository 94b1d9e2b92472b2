"""Sizes shared by the ablation configs (not an experiment itself: no get_config).

Each ablation file loads this module (`config.sibling_module(__file__, "common")`),
calls `sized(config, variant, name)`, then sets its grid.
`embedded(config)`: SmolLM2-135M-Instruct, sized so one seed of a sweep of a few
points takes about a quarter of an hour on 2 CPU cores (a sweep resumes point by
point, so seeds can be run one command at a time: --config.sweep.seeds="(0,)", then
--config.sweep.seeds="(0, 1)"). `runlocal(config)`: the tiny
random model with the byte tokenizer and a handful of prompts and steps, so a whole
sweep runs in about a minute (tests/test_ablations.py runs every one).

Prompts: SL-CAI, AI feedback and PPO read the first human turns of hh-rlhf
harmless-base where it is present (../shared/data), and the evaluations read our own
red-team, helpful and safety prompt sets, so the measured prompts are never trained on.
The harmlessness evaluator is the finished quickstart run's when it is there
(read only), else stage harmless-rm trains one once per sweep (sweep.setup_stages).
"""

import pathlib

from cai_jax.config import ConfigDict, use_tiny_model

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
HH_HARMLESS = SHARED / "hh_rlhf" / "harmless-base-test.jsonl.gz"
QUICKSTART_EVALUATOR = REPO / "runs" / "quickstart" / "harmless_rm" / "model"
TINY_PAIRS = REPO / "tests" / "data" / "hh_pairs_tiny.jsonl"  # synthetic, written for the tests


def embedded(config: ConfigDict, name: str) -> ConfigDict:
  """The embedded model, small: 24 SL prompts, 12 SFT steps, evaluations on 30-48 prompts."""
  config.workdir = f"runs/ablations/{name}"
  config.model.source = "embedded"
  config.model.system_prompt = ""
  c = config.sampler
  c.temperature, c.max_new_tokens, c.max_prompt_len, c.batch_size = 1.0, 48, 1024, 8
  train_prompts = str(HH_HARMLESS) if HH_HARMLESS.exists() else "red_team"

  c = config.sl_data
  c.prompts, c.n_prompts, c.n_helpful, c.n_rounds, c.n_few_shot = train_prompts, 24, 8, 1, 1
  # Training steps of the 135M model take ~6 s per 256-token row on 2 cores: 12 steps of 2
  # rows are about 2 epochs of the SFT set, and SFT is paid at every point.
  c = config.sft
  c.seq_len, c.batch_size, c.num_steps = 256, 2, 12
  c.eval_every, c.checkpoint_every, c.log_every = 6, 6, 3
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 2e-5, 2, "constant"
  c = config.feedback
  c.prompts, c.n_prompts, c.n_few_shot = train_prompts, 16, 1
  c = config.rm
  c.batch_size, c.num_steps, c.max_len = 2, 8, 256
  c.eval_every, c.checkpoint_every, c.eval_fraction = 4, 4, 0.25
  c = config.ppo
  c.prompts, c.num_steps, c.rollout_batch_size, c.minibatch_size = train_prompts, 3, 8, 4
  c.sample_batch_size, c.max_prompt_len, c.max_new_tokens, c.checkpoint_every = 8, 128, 32, 2
  c = config.dpo
  c.batch_size, c.num_steps, c.max_len, c.eval_fraction = 2, 8, 256, 0.25
  c.eval_every, c.checkpoint_every, c.log_every = 4, 4, 2

  c = config.harmless
  c.data = str(HH_HARMLESS)
  c.n_pairs, c.num_steps, c.batch_size, c.max_len = 400, 16, 4, 128
  c.eval_fraction, c.eval_every, c.checkpoint_every = 0.2, 8, 8
  c.prompts, c.n_prompts, c.max_new_tokens = "red_team", 32, 48  # and the 30 helpful ones
  config.safety.limit, config.safety.max_new_tokens = 48, 48
  config.sweep.baseline = "self"  # the base model is a point of its own where it matters
  if QUICKSTART_EVALUATOR.is_dir():
    config.harmless.model = str(QUICKSTART_EVALUATOR)
  else:
    config.sweep.setup_stages = "harmless-rm"
  config.sweep.seeds = (0, 1)
  return config


def runlocal(config: ConfigDict, name: str) -> ConfigDict:
  """The tiny random model: 2 prompts, 1-2 steps per stage, 2 seeds; about a minute a sweep."""
  config.workdir = f"runs/ablations/{name}_runlocal"
  use_tiny_model(config)
  c = config.sampler
  c.max_new_tokens, c.max_prompt_len = 8, 512
  c = config.sl_data
  c.n_prompts, c.n_helpful, c.n_rounds, c.n_few_shot = 2, 1, 1, 1
  # Learning rates far above the real ones, so that 2 steps move the tiny model and the
  # points differ; warm-up off for the same reason.
  c = config.sft
  c.seq_len, c.batch_size, c.num_steps, c.eval_every, c.checkpoint_every = 256, 4, 2, 2, 2
  c.eval_fraction, c.optim.lr, c.optim.warmup_steps = 0.0, 3e-3, 0
  config.feedback.n_prompts, config.feedback.n_few_shot = 2, 1
  c = config.rm
  c.batch_size, c.num_steps, c.max_len, c.eval_every, c.checkpoint_every = 4, 2, 256, 2, 2
  c.optim.lr, c.optim.warmup_steps = 3e-3, 0
  c = config.ppo
  c.num_steps, c.rollout_batch_size, c.minibatch_size, c.sample_batch_size = 1, 4, 4, 4
  c.max_new_tokens, c.checkpoint_every, c.prompts = 4, 1, "red_team"
  c.optim.lr = 1e-3
  c = config.dpo
  c.batch_size, c.num_steps, c.max_len, c.eval_fraction = 4, 2, 256, 0.0
  c.eval_every, c.checkpoint_every = 2, 2
  c.optim.lr, c.optim.warmup_steps = 1e-3, 0
  c = config.harmless
  c.data, c.n_pairs, c.num_steps, c.batch_size, c.max_len = str(TINY_PAIRS), -1, 2, 4, 256
  c.eval_fraction, c.eval_every, c.checkpoint_every = 0.25, 2, 2
  c.optim.lr, c.optim.warmup_steps = 3e-3, 0
  c.n_prompts, c.max_new_tokens = 2, 4
  config.safety.limit, config.safety.max_new_tokens = 6, 4
  config.sweep.setup_stages = "harmless-rm"
  config.sweep.seeds = (0, 1)
  return config



def sized(config: ConfigDict, variant: str, name: str) -> ConfigDict:
  """`runlocal` for the variant "runlocal", else `embedded`."""
  return (runlocal if variant == "runlocal" else embedded)(config, name)
