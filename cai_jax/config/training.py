"""Config sections: the training stages: sft, rm, ppo, dpo."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator, optim_section, validate_optim


@section("sft")
def _sft() -> ConfigDict:
  # Stage `sft` (stages/sft.py -> train/sft.py): fine-tune on SL-CAI revisions + helpful answers (data/pipeline.py).
  return ConfigDict(dict(
      data="",  # SL-CAI JSONL path(s), comma-separated; "" = <workdir>/sl_data/sl_cai.jsonl
      rounds="all",  # critique/revision rounds trained on: all | last | 1-based list "1,4"
      helpful_fraction=-1.0,  # share of helpful examples in the mix; -1 = their natural share
      on_error="raise",  # bad records / over-long examples: raise | skip (counted, reported)
      seq_len=512,
      pack=True,  # pack several examples per row (segment ids) instead of one padded example
      batch_size=8,  # rows per step (global)
      num_steps=100,
      eval_fraction=0.05,  # held-out share of the examples (loss/accuracy every eval_every steps)
      eval_every=50,
      checkpoint_every=50,
      keep=3,
      log_every=10,
      loss="sft_ce",
      seed=0,
      export_hf="",  # HF safetensors dir written at the end; "" = <workdir>/sft/hf; "none" = skip
      optim=optim_section(lr=1e-5, warmup_steps=10, schedule="cosine", weight_decay=0.0),
  ))


@section("rm")
def _rm() -> ConfigDict:
  # Stage `rm` (stages/rm.py -> train/reward.py): reward model on preference pairs, Bradley-Terry
  # soft labels. Writes <workdir>/rm/ (the trained model in rm/model/).
  return ConfigDict(dict(
      init="",  # "" = config.model; else weights (GGUF / safetensors dir) for the trunk
      ai_data="",  # preference JSONL; "" = this workdir's feedback/feedback.jsonl; "none" = no AI pairs
      human_data="",  # hh-rlhf JSONL(.gz) of {"chosen", "rejected"}; "" = none
      human_fraction=0.0,  # share of human comparisons in each batch (0..1)
      n_human=-1,  # cap on human comparisons read; -1 = all
      loss="bradley_terry",
      max_len=512,  # tokens per (prompt + response); longer keep their last tokens
      batch_size=8,  # pairs per step
      num_steps=200,
      eval_fraction=0.1,  # held-out share of the pairs
      eval_every=50,
      checkpoint_every=50,
      keep=3,
      seed=0,
      optim=optim_section(lr=1e-5, warmup_steps=10, weight_decay=0.0, grad_clip=1.0),
  ))


@section("ppo")
def _ppo() -> ConfigDict:
  # Stage `ppo` (stages/ppo.py -> train/ppo.py). Paper values ([HH] §4.1): KL coef
  # 0.001, clip 0.2, gamma 1, no entropy bonus, 1 epoch, answers <= 128 tokens. Not in
  # the paper, our choices: lam 0.95, a separate critic initialised from the policy,
  # rollouts of 16 answers in minibatches of 8 (see ppo.py's docstring).
  return ConfigDict(dict(
      policy="",  # weights path (SFT export); "" = <workdir>/sft/hf if present, else config.model
      # rm (the trained reward model) | feedback (d-RLAIF: the feedback model's direct score,
      # cai/direct_reward.py; principles and few-shot from the feedback section) | token_count
      # (synthetic, for tests/smoke runs)
      reward="rm",
      feedback_model="",  # reward="feedback": the feedback model; "" = config.model
      reward_model="",  # reward="rm": a trained reward model dir; "" = <workdir>/rm/model
      reward_tokens="abcdefghijklmnopqrstuvwxyz",  # reward="token_count": every token of this text scores 1
      prompts="red_team,helpful",  # comma-separated prompt specs (data/prompts.py)
      num_steps=100,  # PPO iterations: one rollout batch + its updates each
      rollout_batch_size=16,  # prompts per iteration (one answer each)
      minibatch_size=8,  # rows per gradient step; must divide rollout_batch_size
      epochs=1,  # passes over each rollout batch (paper: 1; 2-4 elsewhere)
      sample_batch_size=16,  # rows per sampler call
      max_prompt_len=256,  # prompts keep their last tokens
      max_new_tokens=128,
      gamma=1.0,
      lam=0.95,  # GAE lambda
      whiten_advantages=True,
      clip_eps=0.2,
      value_clip_eps=0.2,  # 0 = unclipped value loss
      value_coef=0.5,
      entropy_coef=0.0,
      value_head="separate",  # separate (own trunk, copied from the policy) | shared (head on the policy trunk)
      # Storage of the weights PPO never trains (the KL reference, the reward model): "" = as
      # loaded; "bfloat16" halves them (compute stays in model.dtype; the reference is then the
      # starting policy rounded to bfloat16, so the KL starts at rounding level, not at 0).
      frozen_dtype="",
      kl_coef=0.001,  # initial beta
      kl_controller="fixed",  # fixed | adaptive (Ziegler et al. 2019)
      kl_target=6.0,  # adaptive: target mean KL per answer, nats
      kl_horizon=10_000,  # adaptive: samples over which beta may change by ~e^(+-0.2)
      kl_in="reward",  # reward (per-token penalty folded into the rewards) | loss (kl_penalty loss)
      kl_estimator="k3",  # kl_in="loss": k1 | k2 | k3
      # Registry losses (losses/__init__.py, or a config.loss_modules file) summed by each step.
      # The advantage estimator is GAE (train/gae.py) and not chosen by name: it has no rival yet.
      policy_loss="ppo_clip",
      value_loss="value_clip",
      kl_term="kl_penalty",  # added when kl_in="loss"
      reward_norm="none",  # none | batch (whiten scores per rollout) | running (running mean/std)
      reward_clip=0.0,  # clip normalised scores to +-x; 0 = off
      # Small and constant: the paper uses 0.01x the pre-training rate. Plain Adam (no decay).
      optim=optim_section(lr=1e-6, grad_clip=1.0),
      checkpoint_every=10,
      keep=3,
  ))


@section("dpo")
def _dpo() -> ConfigDict:
  # Stage `dpo` (stages/dpo.py -> train/dpo.py): the policy trained directly on preference pairs
  # (losses/preference.py), in place of rm + ppo. Writes <workdir>/dpo/ (the policy in dpo/hf/).
  return ConfigDict(dict(
      policy="",  # weights path; "" = <workdir>/sft/hf if present, else config.model
      reference="",  # frozen reference weights; "" = the starting policy
      data="",  # preference JSONL; "" = this workdir's feedback/feedback.jsonl; "none" = no AI pairs
      human_data="",  # hh-rlhf JSONL(.gz) of {"chosen", "rejected"}; "" = none
      n_human=-1,  # cap on human comparisons read; -1 = all
      loss="dpo",  # dpo | ipo | soft_dpo (uses the AI label's probability) | robust_dpo
      beta=0.1,  # implicit reward scale (dpo, soft_dpo, robust_dpo; reported for ipo)
      tau=0.1,  # ipo: margin target 1 / (2 tau)
      label_noise=0.1,  # robust_dpo: assumed rate of flipped labels, in [0, 0.5)
      max_len=512,  # tokens per (prompt + answer); the answer keeps its start, the prompt its end
      batch_size=8,  # pairs per step
      num_steps=200,
      eval_fraction=0.1,  # held-out share of the pairs (implicit reward accuracy); 0 = none
      eval_every=50,
      checkpoint_every=50,
      keep=3,
      log_every=10,
      seed=0,
      optim=optim_section(lr=1e-6, warmup_steps=10),
  ))


@validator("sft")
def _validate_sft(c: ConfigDict) -> None:
  validate_optim(c.optim, "sft.optim")
  if c.on_error not in ("raise", "skip"):
    raise ValueError(f"sft.on_error: {c.on_error!r}; expected raise or skip")
  if not (c.helpful_fraction == -1 or 0 <= c.helpful_fraction <= 1):
    raise ValueError(f"sft.helpful_fraction: must be in [0, 1] or -1 (natural share), got {c.helpful_fraction}")
  for field in ("seq_len", "batch_size", "num_steps", "keep"):
    if c[field] < 1:
      raise ValueError(f"sft.{field}: must be >= 1, got {c[field]}")
  for field in ("eval_every", "checkpoint_every", "log_every"):
    if c[field] < 0:
      raise ValueError(f"sft.{field}: must be >= 0 (0 = off), got {c[field]}")
  if not 0 <= c.eval_fraction < 1:
    raise ValueError(f"sft.eval_fraction: must be in [0, 1), got {c.eval_fraction}")
  r = c.rounds.replace(" ", "")
  if r not in ("all", "last") and not all(x.isdigit() and int(x) >= 1 for x in r.split(",")):
    raise ValueError(f"sft.rounds: {c.rounds!r}; expected all, last or 1-based round numbers like '1,4'")


@validator("rm")
def _validate_rm(c: ConfigDict) -> None:
  if not 0.0 <= c.human_fraction <= 1.0:
    raise ValueError(f"rm.human_fraction: expected in [0, 1], got {c.human_fraction}")
  if not 0.0 < c.eval_fraction < 1.0:
    raise ValueError(f"rm.eval_fraction: expected in (0, 1), got {c.eval_fraction}")
  for field, least in (("batch_size", 1), ("num_steps", 0), ("max_len", 8), ("keep", 1),
                       ("eval_every", 0), ("checkpoint_every", 0)):
    if c[field] < least:
      raise ValueError(f"rm.{field}: expected >= {least}, got {c[field]}")
  if c.n_human == 0 or c.n_human < -1:
    raise ValueError(f"rm.n_human: expected -1 (all) or a positive count, got {c.n_human}")
  if c.human_fraction > 0 and not c.human_data:
    raise ValueError(f"rm.human_fraction: {c.human_fraction} of each batch from human pairs, but "
                     "rm.human_data is empty; set rm.human_data=PATH (hh-rlhf JSONL) or "
                     "rm.human_fraction=0")
  if c.ai_data == "none" and not c.human_data:
    raise ValueError("rm.ai_data: 'none' and no rm.human_data leaves no preference pairs")
  validate_optim(c.optim, "rm.optim")


@validator("ppo")
def _validate_ppo(c: ConfigDict) -> None:
  choices = dict(reward=("rm", "feedback", "token_count"), value_head=("separate", "shared"),
                 kl_controller=("fixed", "adaptive"), kl_in=("reward", "loss"),
                 kl_estimator=("k1", "k2", "k3"), reward_norm=("none", "batch", "running"),
                 frozen_dtype=("", "float32", "bfloat16"))
  for field, allowed in choices.items():
    if c[field] not in allowed:
      raise ValueError(f"ppo.{field}: {c[field]!r}; expected one of {allowed}")
  for field in ("num_steps", "rollout_batch_size", "minibatch_size", "epochs", "sample_batch_size",
                "max_prompt_len", "max_new_tokens", "kl_horizon"):
    if c[field] <= 0:
      raise ValueError(f"ppo.{field}: must be positive, got {c[field]}")
  if c.rollout_batch_size % c.minibatch_size:
    raise ValueError(f"ppo.minibatch_size: {c.minibatch_size} must divide rollout_batch_size "
                     f"{c.rollout_batch_size}")
  if not 0 <= c.gamma <= 1 or not 0 <= c.lam <= 1:
    raise ValueError(f"ppo.gamma / ppo.lam: must be in [0, 1], got {c.gamma}, {c.lam}")
  validate_optim(c.optim, "ppo.optim")
  for field in ("value_clip_eps", "value_coef", "entropy_coef", "reward_clip", "checkpoint_every"):
    if c[field] < 0:
      raise ValueError(f"ppo.{field}: must be >= 0, got {c[field]}")
  if c.keep < 1:
    raise ValueError(f"ppo.keep: must be >= 1, got {c.keep}")
  if c.kl_target <= 0 or c.kl_coef < 0 or c.clip_eps <= 0:
    raise ValueError("ppo.kl_target / kl_coef / clip_eps: need kl_target > 0, kl_coef >= 0, "
                     f"clip_eps > 0; got {c.kl_target}, {c.kl_coef}, {c.clip_eps}")


@validator("dpo")
def _validate_dpo(c: ConfigDict) -> None:
  for field in ("beta", "tau"):
    if c[field] <= 0:
      raise ValueError(f"dpo.{field}: must be positive, got {c[field]}")
  if not 0.0 <= c.label_noise < 0.5:
    raise ValueError(f"dpo.label_noise: expected in [0, 0.5), got {c.label_noise}")
  if not 0.0 <= c.eval_fraction < 1.0:
    raise ValueError(f"dpo.eval_fraction: expected in [0, 1), got {c.eval_fraction}")
  if c.batch_size < 1 or c.num_steps < 0 or c.max_len < 8 or c.keep < 1:
    raise ValueError("dpo.batch_size/num_steps/max_len/keep: expected >= 1 / >= 0 / >= 8 / >= 1, "
                     f"got {c.batch_size} / {c.num_steps} / {c.max_len} / {c.keep}")
  for field in ("eval_every", "checkpoint_every", "log_every"):
    if c[field] < 0:
      raise ValueError(f"dpo.{field}: must be >= 0 (0 = off), got {c[field]}")
  if c.n_human == 0 or c.n_human < -1:
    raise ValueError(f"dpo.n_human: expected -1 (all) or a positive count, got {c.n_human}")
  if c.data == "none" and not c.human_data:
    raise ValueError("dpo.data: 'none' and no dpo.human_data leaves no preference pairs")
  validate_optim(c.optim, "dpo.optim")
