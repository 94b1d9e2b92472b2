"""RL-CAI: PPO of the SL-CAI (SFT) policy against the AI-feedback reward model.

  python -m cai_jax ppo --config experiments/rl_cai.py
  python -m cai_jax ppo --config experiments/rl_cai.py:tiny   # random tiny model, synthetic reward

The default reads the policy from the `sft` stage's export (<workdir>/sft/hf) and
the reward model from the `rm` stage (<workdir>/rm/model); override with
--config.ppo.policy=<weights path> and --config.ppo.reward_model=<reward model dir>. `tiny` runs in seconds on a laptop CPU: a random
tiny model learns to write lowercase letters (reward = their count).
"""

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "tiny")


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/rl_cai"
  c = config.ppo
  if variant == "tiny":
    config.workdir = "runs/rl_cai_tiny"
    use_tiny_model(config)
    c.reward = "token_count"
    c.prompts = "red_team"
    c.num_steps = 20
    c.rollout_batch_size = 16
    c.minibatch_size = 8
    c.sample_batch_size = 16
    c.max_prompt_len = 16
    c.max_new_tokens = 16
    c.epochs = 2
    c.optim.lr = 3e-3
    c.kl_coef = 0.5
    c.value_head = "shared"
    c.checkpoint_every = 5
    return config
  config.model.source = "embedded"  # used as is when no SFT export is found
  c.policy = ""  # "" = <workdir>/sft/hf (the `sft` stage's export) if present, else config.model
  c.reward = "rm"
  c.reward_model = ""  # "" = <workdir>/rm/model (the `rm` stage of the same workdir)
  return config
