"""Stage `ppo` (RL-CAI): the SFT policy trained against the reward model.

  python -m cai_jax ppo --config experiments/rl_cai.py

Reads: the policy (config.model, or the SFT stage's workdir in ppo.policy), the
reward model (ppo.reward_model = the `rm` stage's workdir) and prompt sets
(ppo.prompts). Writes under <workdir>/ppo: orbax checkpoints (TrainState +
the KL controller / reward statistics in `extra`), metrics.jsonl (through the
shared loop), curves.png and summary.json. A rerun resumes from the latest
checkpoint and continues bit-identically.
"""

from __future__ import annotations

import itertools
import json
import logging
import pathlib

import jax
import jax.numpy as jnp

from cai_jax import sharding
from cai_jax.train import ppo, ppo_rewards
from cai_jax.train import state as state_lib

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it renames


def encode_prompts(specs: str, tokenizer, chat) -> list[list[int]]:
  """Every prompt of the comma-separated specs as a chat turn awaiting the answer."""
  from cai_jax.data.prompts import load_prompts
  from cai_jax.data.sl_cai import resolve_repo_path

  prompts = []
  for spec in (s.strip() for s in specs.split(",") if s.strip()):
    for p in load_prompts(resolve_repo_path(spec)):
      prompts.append(tokenizer.encode(chat.format([{"role": "user", "content": p.text}])))
  if not prompts:
    raise ValueError(f"ppo.prompts: {specs!r} gave no prompts")
  return prompts


def load_policy(config, mesh):
  """(graphdef, params, tokenizer, chat, d_model) of the starting policy.

  ppo.policy: a weights path (the SFT export <sft workdir>/sft/hf, a .gguf, ...);
  "" = <workdir>/sft/hf when the SFT stage exported there, else config.model.
  """
  from cai_jax.models.load import load_model

  model = config.model.copy_and_resolve_references()
  policy = config.ppo.policy or ""
  if not policy and (pathlib.Path(config.workdir) / "sft" / "hf").is_dir():
    policy = str(pathlib.Path(config.workdir) / "sft" / "hf")
  if policy:
    if not pathlib.Path(policy).exists():
      raise FileNotFoundError(f"ppo.policy: {policy!r} does not exist (expected the SFT stage's "
                              "export <workdir>/sft/hf or a weights file)")
    with model.unlocked():
      model.source, model.preset = policy, ""
    log.info("ppo: policy from %s", policy)
  loaded = load_model(model, mesh, rules="train")
  return loaded.graphdef, loaded.params, loaded.tokenizer, loaded.chat, loaded.cfg.d_model


def make_reward_fn(config, mesh, tokenizer):
  """The configured reward function (see ppo_rewards.py)."""
  c = config.ppo
  if c.reward == "token_count":
    return ppo_rewards.token_count_reward(tokenizer.encode(c.reward_tokens))
  from cai_jax.train import reward as reward_lib

  # "" = this experiment's own workdir (where the `rm` stage of the same pipeline wrote).
  graphdef, params = reward_lib.load_reward_model(c.reward_model or config.workdir, mesh)
  return ppo_rewards.reward_model_fn(reward_lib.reward_scores, graphdef, params, mesh=mesh,
                                     batch_size=c.sample_batch_size)


def build(config, mesh=None):
  """Everything a PPO run needs: (state, shardings, PPOIteration)."""
  c = config.ppo
  mesh = mesh or sharding.make_mesh(dict(config.mesh))
  graphdef, policy, tokenizer, chat, d_model = load_policy(config, mesh)
  ref_params = jax.tree.map(jnp.copy, policy)  # frozen reference = the starting (SFT) policy
  shared = c.value_head == "shared"
  head_gd, value = ppo.init_value_params(shared, policy, d_model, mesh)
  spec = ppo.PPOSpec(graphdef, head_gd, shared)
  params = {"policy": policy, "value": value}
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  # One optimizer update per minibatch: num_steps iterations x epochs x minibatches.
  updates = c.num_steps * c.epochs * (c.rollout_batch_size // c.minibatch_size)
  tx = state_lib.make_optimizer(c.optim, num_steps=updates)
  state, shardings = state_lib.init_train_state(params, param_shardings, tx,
                                                jax.random.key(config.seed), mesh)
  iteration = ppo.PPOIteration(
      spec=spec, cfg=c.to_dict(), tx=tx, mesh=mesh, state_shardings=shardings,
      prompts=encode_prompts(c.prompts, tokenizer, chat),
      reward_fn=make_reward_fn(config, mesh, tokenizer), ref_params=ref_params,
      host=ppo.HostState(kl_coef=float(c.kl_coef)), stop_ids=tokenizer.stop_ids,
      pad_id=tokenizer.pad_id, seed=config.seed)
  return state, shardings, iteration


def run(config) -> dict:
  """Stage `ppo`: trains, resuming from <workdir>/ppo/checkpoints when present."""
  from cai_jax import report
  from cai_jax.train import checkpoint, loop

  c = config.ppo
  workdir = pathlib.Path(config.workdir) / "ppo"
  workdir.mkdir(parents=True, exist_ok=True)
  state, shardings, iteration = build(config)
  checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", keep=c.keep)
  state, extra = loop.restore_or_keep(checkpointer, state, shardings)
  if extra is not None:
    iteration.host = ppo.HostState.from_json(extra["ppo"])
    log.info("ppo: resumed at iteration %d (kl_coef %.6g)", int(state.step), iteration.host.kl_coef)
  state = loop.run_loop(state=state, step_fn=iteration, batches=itertools.repeat(None),
                        num_steps=c.num_steps, workdir=workdir, checkpointer=checkpointer,
                        data_state_fn=lambda: {"ppo": iteration.host.to_json()},
                        save_every=c.checkpoint_every, stage="ppo", log_every=1)
  records = [r for r in report.read_jsonl(workdir / "metrics.jsonl") if r.get("stage") == "ppo"]
  png = report.plot_stage(records, "ppo", workdir / "curves.png",
                          keys=("reward_mean", "kl", "kl_coef", "entropy", "value_loss",
                                "explained_variance", "clip_frac", "response_length"))
  last = records[-1] if records else {}
  summary = {"stage": "ppo", "steps": int(state.step), "curves": str(png) if png else None,
             **{k: last.get(k) for k in ("reward_mean", "kl", "kl_coef", "entropy")}}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
