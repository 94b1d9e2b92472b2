"""Stage `ppo` (RL-CAI): the SFT policy trained against the reward model.

  python -m cai_jax ppo --config experiments/rl_cai.py

Reads the policy (ppo.policy; default this workdir's SFT export if present,
else config.model), the reward model (ppo.reward_model; default this workdir's
rm/model) and prompt sets (ppo.prompts). With ppo.reward="feedback" there is no
reward model: the feedback model scores each answer against the starting policy's
answer (d-RLAIF, cai/direct_reward.py). Writes <workdir>/ppo/ (checkpoints/
with the KL controller and reward statistics in `extra`, metrics.jsonl, tb/,
curves.png, summary.json, hf/: the trained policy as HF safetensors). A rerun
resumes and continues bit-identically. The losses are ppo.policy_loss,
ppo.value_loss and (kl_in="loss") ppo.kl_term, looked up after importing
config.loss_modules; the summary's "losses" records them. With checkpoint.enabled
the constitutional checkpoint watches the policy's drift from the starting policy
(stages/guarding.py; a pause exits with code 3 until acknowledged).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib

import jax
import jax.numpy as jnp

from cai_jax import losses, report, weights
from cai_jax.cai.direct_reward import DirectAIReward, DirectRewardSettings
from cai_jax.data import fingerprint
from cai_jax.data.prompts import load_prompts
from cai_jax.models.reward import load_reward_model, reward_scores
from cai_jax.sampling import TextSampler
from cai_jax.stages import common, guarding
from cai_jax.stages import constitution as constitution_stage
from cai_jax.stages import feedback as feedback_stage
from cai_jax.train import checkpoint, loop, ppo, ppo_rewards
from cai_jax.train import state as state_lib

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it renames
CURVES = ("reward_mean", "kl", "kl_coef", "entropy", "value_loss", "explained_variance", "clip_frac",
          "response_length")


def prompt_texts(specs: str) -> list[str]:
  """Every prompt of the comma-separated specs (data/prompts.py)."""
  texts = [p.text for spec in (s.strip() for s in specs.split(",") if s.strip())
           for p in load_prompts(common.repo_path(spec))]
  if not texts:
    raise ValueError(f"ppo.prompts: {specs!r} gave no prompts")
  return texts


def reward_fn(config, mesh, loaded, ref_params, texts: list[str], encoded: list[list[int]]):
  """The configured reward: the trained reward model, the feedback model's direct score
  (d-RLAIF) or the synthetic token count."""
  c = config.ppo
  if c.reward == "token_count":
    return ppo_rewards.token_count_reward(loaded.tokenizer.encode(c.reward_tokens))
  if c.reward == "feedback":
    return direct_reward(config, mesh, loaded, ref_params, texts, encoded)
  where = pathlib.Path(c.reward_model) if c.reward_model else common.layout(config).reward_model
  log.info("ppo: reward model from %s", where)
  graphdef, params = load_reward_model(where, mesh)
  params = frozen(params, c.frozen_dtype)
  return ppo_rewards.reward_model_fn(reward_scores, graphdef, params, mesh=mesh,
                                     batch_size=c.sample_batch_size)


def direct_reward(config, mesh, loaded, ref_params, texts, encoded) -> DirectAIReward:
  """d-RLAIF: the feedback model (ppo.feedback_model, default config.model) compares each
  answer with the frozen starting policy's greedy answer, in both orders, under
  feedback.k_principles principles of the feedback section's constitution."""
  c, f = config.ppo, config.feedback
  source = c.feedback_model or config.model.source
  log.info("ppo: direct AI reward from the feedback model %s (no reward model)", source)
  judge = common.load(config, mesh, rules="sample", source=source)
  judge_sampler = TextSampler(judge, common.judge_settings(config), mesh=mesh)
  baseline = TextSampler(dataclasses.replace(loaded, params=ref_params),
                         common.sampler_settings(config, temperature=0.0,
                                                 max_new_tokens=c.max_new_tokens,
                                                 max_prompt_len=c.max_prompt_len,
                                                 batch_size=c.sample_batch_size), mesh=mesh)
  # The feedback stage's constitution (tiers, profiles, subset and draw weights included).
  constitution = constitution_stage.from_config(config, "feedback", few_shot="")
  questions = lambda prompt, rng, k: [p.feedback for p in constitution.sample(rng, k)]  # noqa: E731
  max_len = c.max_prompt_len
  prompts = {tuple(ids[-max_len:]): text for ids, text in zip(encoded, texts)}
  settings = DirectRewardSettings(k_principles=f.k_principles, seed=config.seed,
                                  prefix=feedback_stage.few_shot(f))
  return DirectAIReward(prompts, loaded.tokenizer.decode,
                        lambda ps: baseline.chat([[{"role": "user", "content": p}] for p in ps]),
                        questions, judge_sampler.logprobs, settings)


def chosen_losses(config) -> dict[str, str | None]:
  """The registry losses this run sums, by role (kl: None when the KL is in the reward)."""
  c = config.ppo
  return {"policy": c.policy_loss, "value": c.value_loss,
          "kl": c.kl_term if c.kl_in == "loss" else None}


def frozen(params, dtype: str):
  """Weights PPO never trains, stored at ppo.frozen_dtype ("" = unchanged; shardings kept)."""
  if not dtype:
    return params
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      params)


def build(config, mesh=None):
  """Everything a PPO run needs: (state, shardings, PPOIteration)."""
  return build_with_model(config, mesh)[:3]


def build_with_model(config, mesh=None):
  """(state, shardings, PPOIteration, the starting policy's LoadedModel)."""
  c = config.ppo
  losses.import_loss_modules(config.loss_modules)
  mesh = mesh or common.mesh(config)
  source, why = common.layout(config).start_model(c.policy, config.model.source)
  if c.policy and not pathlib.Path(c.policy).exists():
    raise FileNotFoundError(f"ppo.policy: {c.policy!r} does not exist (expected the SFT stage's "
                            "export <workdir>/sft/hf or a weights file)")
  common.say_start_model("ppo (policy)", source, why)
  loaded = common.load(config, mesh, rules="train", source=source)
  policy = loaded.params
  # The frozen reference is the loaded weights themselves: init_train_state (not donating)
  # builds the trained copy, so the starting policy is held once, not twice (or, with
  # ppo.frozen_dtype, once more at that dtype while the loaded weights are dropped).
  ref_params = frozen(policy, c.frozen_dtype)
  if ref_params is not policy:
    loaded = dataclasses.replace(loaded, params=ref_params)
  shared = c.value_head == "shared"
  head_gd, value = ppo.init_value_params(shared, policy, loaded.cfg.d_model, mesh)
  spec = ppo.PPOSpec(loaded.graphdef, head_gd, shared)
  params = {"policy": policy, "value": value}
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  # One optimizer update per minibatch: num_steps iterations x epochs x minibatches.
  updates = c.num_steps * c.epochs * (c.rollout_batch_size // c.minibatch_size)
  tx = state_lib.make_optimizer(c.optim.to_dict(), num_steps=updates)
  state, shardings = state_lib.init_train_state(params, param_shardings, tx,
                                                jax.random.key(config.seed), mesh)
  tok = loaded.tokenizer
  texts = prompt_texts(c.prompts)
  encoded = [TextSampler(loaded).encode_chat([{"role": "user", "content": t}]) for t in texts]
  iteration = ppo.PPOIteration(
      spec=spec, cfg=c.to_dict(), tx=tx, mesh=mesh, state_shardings=shardings, prompts=encoded,
      reward_fn=reward_fn(config, mesh, loaded, ref_params, texts, encoded), ref_params=ref_params,
      host=ppo.HostState(kl_coef=float(c.kl_coef)), stop_ids=tok.stop_ids, pad_id=tok.pad_id,
      seed=config.seed)
  return state, shardings, iteration, loaded


def run(config) -> dict:
  c, layout = config.ppo, common.layout(config)
  common.check_batch_divides_mesh(config, "ppo.minibatch_size", "ppo.rollout_batch_size")
  workdir = layout.stage_dir("ppo")
  workdir.mkdir(parents=True, exist_ok=True)
  with fingerprint.stage_lock(workdir):
    return _run_locked(config, c, layout, workdir)


def described_settings(config) -> dict:
  """What decides the PPO run's weights (refused on resume when changed): the starting policy,
  the prompts and every ppo field except how often it checkpoints and how many it keeps."""
  c = config.ppo
  source, _ = common.layout(config).start_model(c.policy, config.model.source)
  texts = prompt_texts(c.prompts)
  return {"model": dataclasses.asdict(common.model_spec(config, source)),
          "data": {"prompts": {"spec": c.prompts, "n": len(texts), "hash": common.data_hash(texts)}},
          "training": {k: v for k, v in c.to_dict().items() if k not in ("checkpoint_every", "keep")},
          "seed": config.seed}


def _run_locked(config, c, layout, workdir) -> dict:
  common.check_training_settings(layout, "ppo", described_settings(config))
  alerts = guarding.enforce_acknowledgement(config.checkpoint, "ppo", workdir)  # before loading
  mesh = common.mesh(config)
  state, shardings, iteration, loaded = build_with_model(config, mesh)
  # PPO keeps the starting weights frozen as its KL reference: the checkpoint shares them.
  guards = guarding.hooks(config, "ppo", loaded, mesh, workdir, reference_params=iteration.ref_params,
                          policy_params=lambda params: params["policy"], alerts=alerts)
  checkpointer = checkpoint.Checkpointer(layout.checkpoints("ppo"), keep=c.keep)
  state, extra = loop.restore_or_keep(checkpointer, state, shardings)
  if extra is not None:
    iteration.host = ppo.HostState.from_json(extra["ppo"])
    log.info("ppo: resumed at iteration %d (kl_coef %.6g)", int(state.step), iteration.host.kl_coef)
    if iteration.host.kl_coef != float(c.kl_coef):
      log.info("ppo: the checkpoint's KL coefficient %.6g replaces the configured ppo.kl_coef %.6g "
               "(%s controller state is part of the run)", iteration.host.kl_coef, c.kl_coef,
               c.kl_controller)
  state = loop.run_loop(state=state, step_fn=iteration, batches=itertools.repeat(None),
                        num_steps=c.num_steps, workdir=workdir, checkpointer=checkpointer,
                        data_state_fn=lambda: {"ppo": iteration.host.to_json()},
                        save_every=c.checkpoint_every, stage="ppo", log_every=1, hooks=guards)
  checkpointer.close()
  # The trained policy as HF safetensors, loadable as model.source (evaluations compare it).
  weights.export_hf_from_devices(layout.ppo_export, loaded.cfg, state.params["policy"],
                                 loaded.tokenizer)
  records = loop.read_metrics(layout.metrics("ppo"), "ppo")
  png = report.plot_stage(records, "ppo", workdir / "curves.png", keys=CURVES)
  last = records[-1] if records else {}
  summary = {"steps": int(state.step), "curves": str(png) if png else None,
             "export_hf": str(layout.ppo_export), "losses": chosen_losses(config),
             **{k: last.get(k) for k in ("reward_mean", "kl", "kl_coef", "entropy")},
             "checkpoint": guarding.summary(guards)}
  return common.finish("ppo", summary, layout.summary("ppo"))
