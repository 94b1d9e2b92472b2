"""The whole CAI pipeline on the embedded SmolLM2-135M-Instruct, sized for 2 CPU cores.

  python -m cai_jax pipeline --config experiments/quickstart.py
  python -m cai_jax pipeline --config experiments/quickstart.py:tiny   # random tiny model, ~1 min

harmless-rm (a small harmlessness evaluator on human hh-rlhf pairs) -> sl-data
(critique -> revision on our red-team prompts, refusal classes and harmlessness
per round) -> sft -> feedback (AI preference labels from (A)/(B) log-probs) ->
rm (Bradley-Terry) -> ppo (KL to the SFT policy) -> eval-hhh (a slice of the
paper's 438 HHH comparisons) -> eval-safety (over-refusal vs unsafe compliance,
base vs SFT vs PPO) -> eval-harmless -> eval-drift -> report (<workdir>/report.md
+ plots/). The stages that read ../shared/data (harmless-rm, eval-harmless,
eval-hhh) are skipped where it is absent: the run and the report say so, with the
setting that enables each.

Every number is tiny on purpose (a few prompts, a few steps): this run shows the
machinery end to end, it does not reproduce the paper. Scale up with overrides,
e.g. --config.sl_data.n_prompts=-1 --config.sft.num_steps=1000.
"""

import pathlib

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "tiny")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data"
HHH = SHARED / "cai_paper/evals/438HHHEvaluations.jsonl"
HH_HARMLESS = SHARED / "hh_rlhf/harmless-base-test.jsonl.gz"


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/quickstart"
  config.model.source = "embedded"
  config.model.system_prompt = ""
  # Laptop-sized memory: every training stage recomputes each block's activations in the
  # backward pass (the reward-model step's temporaries fall from 2.6 to 1.1 GB), and PPO's
  # critic is a head on the policy trunk rather than a second trunk with its own Adam state;
  # the weights PPO never trains are stored in bfloat16.
  config.model.remat = True
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
  c.value_head = "shared"
  c.frozen_dtype = "bfloat16"  # the KL reference and the reward model: 0.5 GB less

  config.eval.hhh = str(HHH)
  config.eval.limit = 24

  # The measurements: a small evaluator on human harmlessness pairs, then base vs SFT vs PPO
  # on a slice of our over-refusal / unsafe-compliance prompts and on red-team prompts.
  c = config.harmless
  c.data = str(HH_HARMLESS)
  c.n_pairs, c.num_steps, c.batch_size, c.max_len = 400, 16, 4, 128
  c.eval_fraction, c.eval_every, c.checkpoint_every = 0.2, 8, 8
  c.n_prompts, c.max_new_tokens = 16, 48
  config.safety.limit, config.safety.max_new_tokens = 48, 48
  config.drift.n_prompts = 16
  # Every stage is listed: those that need a public data set the user brings (harmless-rm,
  # eval-harmless: hh-rlhf pairs; eval-hhh: the paper's HHH file) are skipped, loudly, with the
  # reason and the setting that enables them, where the file is absent.
  config.pipeline.stages = ",".join(["harmless-rm", "sl-data", "sft", "feedback", "rm", "ppo",
                                     "eval-hhh", "eval-safety", "eval-harmless", "eval-drift"])

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
    config.harmless.num_steps, config.harmless.max_len, config.harmless.n_prompts = 2, 256, 2
    config.harmless.max_new_tokens = 8
    config.safety.limit, config.safety.max_new_tokens = 8, 8
    config.drift.n_prompts, config.drift.k = 4, 3
  return config
