"""The loss registry: every loss has one signature.

    loss(outputs: dict[str, Array], batch: dict[str, Array], cfg: Mapping) -> LossOutput

`outputs` holds what the step's forward pass computed ("logits" [B, T, V] or
"hidden" [B, T, D] + "head" [V, D], "rewards" [B], "values" [B, T],
"logprobs" [B, T], ...); `batch` the inputs;
`cfg` the loss's own settings (a config section or a plain dict). Configs pick
losses by name (`get_loss("sft_ce")`). Losses of other stages are appended
below with `@register_loss`; a user's own losses live in their own modules or
.py files, named in `config.loss_modules` and imported by `import_loss_modules`
before any name is looked up (as big_vision imports its preprocessing ops).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pathlib
import re
import sys
from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp

from cai_jax.losses import fused_ce


@flax.struct.dataclass
class LossOutput:
  """A scalar to differentiate plus scalar metrics to log."""

  total: jax.Array  # []
  metrics: dict[str, jax.Array]


LossFn = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array], Mapping], LossOutput]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
  """Decorator: registers `fn` under `name` (a second registration of a name is an error)."""
  def register(fn: LossFn) -> LossFn:
    if name in _LOSSES and _LOSSES[name] is not fn:
      raise ValueError(f"loss {name!r} is already registered ({_LOSSES[name].__module__})")
    _LOSSES[name] = fn
    return fn
  return register


def get_loss(name: str) -> LossFn:
  """The registered loss called `name`, or a KeyError listing the known ones."""
  if name not in _LOSSES:
    raise KeyError(unknown_loss_message(name))
  return _LOSSES[name]


def registered_losses() -> dict[str, LossFn]:
  """A copy of the registry: name -> loss, in registration order."""
  return dict(_LOSSES)


def unknown_loss_message(name: str, where: str = "") -> str:
  """"<where>: unknown loss 'x'; did you mean 'y'? registered: [...]" (the hint only when one is close)."""
  hint = difflib.get_close_matches(name, list(_LOSSES), n=1)
  return (f"{where + ': ' if where else ''}unknown loss {name!r}; "
          + (f"did you mean {hint[0]!r}? " if hint else "") + f"registered: {sorted(_LOSSES)}")


def import_loss_modules(spec: str, where: str = "config.loss_modules") -> list[str]:
  """Imports every module of `spec` so that its `@register_loss` decorators run.

  `spec` is comma-separated; each entry is a module path ("my_project.losses") or
  a .py file. A file is loaded under a stable name derived from its resolved path
  (`cai_jax_user_loss_<stem>_<hash>`), so importing it again, from the config check
  and then from the stage, is a no-op rather than a second registration. Returns
  the module names. A missing file or module is a ValueError naming `where`.
  """
  names = []
  for entry in (e.strip() for e in spec.split(",") if e.strip()):
    if entry.endswith(".py"):
      names.append(_import_file(pathlib.Path(entry), where))
      continue
    try:
      importlib.import_module(entry)
    except ModuleNotFoundError as e:
      # Only a module missing from the entry's own path is the config's fault; a missing
      # dependency inside the user's module keeps its traceback.
      if e.name is None or not (entry == e.name or entry.startswith(e.name + ".")):
        raise
      raise ValueError(f"{where}: no module named {entry!r} (expected an importable module path "
                       "or a .py file)") from None
    names.append(entry)
  return names


def _import_file(path: pathlib.Path, where: str) -> str:
  if not path.is_file():
    raise ValueError(f"{where}: no file at {str(path)!r} (expected a .py file that registers "
                     "losses with @register_loss)")
  resolved = path.resolve()
  stem = re.sub(r"\W", "_", resolved.stem)
  name = f"cai_jax_user_loss_{stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
  if name in sys.modules:
    return name
  spec = importlib.util.spec_from_file_location(name, resolved)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # before exec, as `import` does (dataclasses and pickling look it up)
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return name


def lm_logits(outputs: Mapping[str, jax.Array]) -> jax.Array:
  """[B, T, V] float32 logits from outputs["logits"], or from "hidden" @ "head"^T."""
  if "logits" in outputs:
    return outputs["logits"].astype(jnp.float32)
  return jnp.einsum("btd,vd->btv", outputs["hidden"], outputs["head"],
                    preferred_element_type=jnp.float32)


@register_loss("sft_ce")
def sft_ce(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], cfg: Mapping) -> LossOutput:
  """Next-token cross-entropy on response tokens only.

  The logits at position t predict tokens[t + 1]. outputs holds either
  "logits" [B, T, V], or "hidden" [B, T, D] with "head" [V, D] (what the SFT
  step passes): then the loss runs chunked through `fused_ce` and the
  [B, T, V] logits never exist. batch["tokens"] [B, T]; batch["loss_mask"]
  [B, T] is 1 where tokens[t] is a response token to train on (position 0
  never counts). Mean over the masked targets; an all-zero mask gives loss 0.
  accuracy: share of targets that hold the top logit. cfg is unused (kept for
  the common signature).
  """
  del cfg
  tokens = batch["tokens"]
  # Shifted targets, padded back to length T so that position t pairs with logits t.
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  mask = jnp.pad(batch["loss_mask"][:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
  n = mask.sum()
  denom = jnp.maximum(n, 1.0)
  if "logits" in outputs:
    logits = outputs["logits"].astype(jnp.float32)  # [B, T, V]
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = ((logz - target_logit) * mask).sum() / denom
    correct = ((target_logit >= logits.max(axis=-1)) * mask).sum()
  else:
    loss, correct = fused_ce.linear_cross_entropy(outputs["hidden"], outputs["head"], targets,
                                                  mask / denom)
  accuracy = correct.astype(jnp.float32) / denom
  return LossOutput(total=loss, metrics={"loss": loss, "accuracy": accuracy, "n_tokens": n})


@register_loss("bradley_terry")
def bradley_terry(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], cfg: Mapping) -> LossOutput:
  """Bradley-Terry preference loss with soft labels (reward-model training).

  outputs["reward_a"], outputs["reward_b"] [B]: scalar rewards of the two responses.
  batch["p_a"] [B]: probability that response A is the better one (1/0 = hard labels).
  batch["weight"] [B] (optional): 1 for real pairs, 0 for padding rows.
  With d = r_a - r_b:  loss = -(p log sigma(d) + (1 - p) log sigma(-d)), averaged over
  weighted pairs. Metrics: loss; accuracy = share of decided pairs (p != 0.5) whose
  reward order agrees with the label (ties count wrong); margin = mean of
  sign(p - 0.5) * d over decided pairs (how far the preferred answer is ahead).
  cfg is unused (kept for the common signature).
  """
  del cfg
  d = (outputs["reward_a"] - outputs["reward_b"]).astype(jnp.float32)  # [B]
  p = batch["p_a"].astype(jnp.float32)  # [B]
  w = batch.get("weight", jnp.ones_like(p)).astype(jnp.float32)  # [B]
  nll = -(p * jax.nn.log_sigmoid(d) + (1.0 - p) * jax.nn.log_sigmoid(-d))  # [B]
  loss = (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
  side = jnp.sign(p - 0.5)  # [B] +1 A preferred, -1 B preferred, 0 undecided
  decided = w * jnp.abs(side)
  n_decided = jnp.maximum(decided.sum(), 1.0)
  agree = (side * d > 0).astype(jnp.float32)
  accuracy = (agree * decided).sum() / n_decided
  margin = (side * d * decided).sum() / n_decided
  return LossOutput(total=loss, metrics={"loss": loss, "accuracy": accuracy, "margin": margin})


# ----------------------------------------------------------------------------- PPO (train/ppo.py)
# Arrays are [B, T] over prompt + response, aligned like sampling.sequence_logprobs
# (column t = the action "emit token t"); batch["mask"] marks response tokens and every
# mean is over those tokens of the whole minibatch (a token-level mean).


def _token_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  m = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


def kl_estimate(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "k1") -> jax.Array:
  """Per-token estimate of KL(policy || reference) at tokens the policy sampled.

  With d = ref_logprobs - logprobs (Schulman 2020, "Approximating KL divergence"):
  k1 = -d (unbiased, can be negative; the per-token penalty of Ziegler et al. 2019),
  k2 = d^2 / 2 (biased, >= 0), k3 = exp(d) - 1 - d (unbiased, >= 0).
  """
  d = ref_logprobs - logprobs
  if kind == "k1":
    return -d
  if kind == "k2":
    return 0.5 * jnp.square(d)
  if kind == "k3":
    return jnp.expm1(d) - d
  raise ValueError(f"kl estimator {kind!r}: expected k1, k2 or k3")


@register_loss("ppo_clip")
def ppo_clip_loss(outputs, batch, cfg) -> LossOutput:
  """PPO's clipped surrogate (Schulman et al. 2017) on response tokens, minus an entropy bonus.

  outputs: "logprobs" [B, T] (current policy), optional "entropy" [B, T];
  batch: "old_logprobs", "advantages", "mask"; cfg: clip_eps, entropy_coef.
  Metrics: clip_frac = share of tokens whose clipped term is the smaller one
  (their gradient is cut); approx_kl = mean of (r - 1) - log r, r = new/old.
  """
  mask = batch["mask"]
  eps = float(cfg.get("clip_eps", 0.2))
  log_ratio = jnp.where(mask, outputs["logprobs"] - batch["old_logprobs"], 0.0)
  ratio = jnp.exp(log_ratio)
  adv = batch["advantages"]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv
  policy_loss = -_token_mean(jnp.minimum(unclipped, clipped), mask)
  metrics = {
      "policy_loss": policy_loss,
      "clip_frac": _token_mean((clipped < unclipped).astype(jnp.float32), mask),
      "approx_kl": _token_mean((ratio - 1.0) - log_ratio, mask),
  }
  total = policy_loss
  if "entropy" in outputs:
    entropy = _token_mean(outputs["entropy"], mask)
    metrics["entropy"] = entropy
    total = total - float(cfg.get("entropy_coef", 0.0)) * entropy
  return LossOutput(total=total, metrics=metrics)


@register_loss("value_clip")
def value_clip_loss(outputs, batch, cfg) -> LossOutput:
  """Clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2).

  outputs: "values" [B, T]; batch: "old_values", "returns", "mask";
  cfg: value_clip_eps (0 = no clipping), value_coef (scales `total` only; required, its
  one default is config.ppo.value_coef).
  """
  mask = batch["mask"]
  eps = float(cfg.get("value_clip_eps", 0.2))
  v, old, ret = outputs["values"], batch["old_values"], batch["returns"]
  err = jnp.square(v - ret)
  if eps > 0:
    v_clip = old + jnp.clip(v - old, -eps, eps)
    err_clip = jnp.square(v_clip - ret)
    clip_frac = _token_mean((err_clip > err).astype(jnp.float32), mask)
    err = jnp.maximum(err, err_clip)
  else:
    clip_frac = jnp.zeros((), jnp.float32)
  value_loss = 0.5 * _token_mean(err, mask)
  return LossOutput(total=float(cfg["value_coef"]) * value_loss,
                    metrics={"value_loss": value_loss, "value_clip_frac": clip_frac})


@register_loss("kl_penalty")
def kl_penalty_loss(outputs, batch, cfg) -> LossOutput:
  """coef * mean per-token KL(policy || reference), for a KL term in the loss
  rather than in the reward. outputs: "logprobs"; batch: "ref_logprobs", "mask",
  optional "kl_coef" [] (an adaptive controller's current value; else cfg.kl_coef);
  cfg: kl_estimator (k1 | k2 | k3, default k3)."""
  mask = batch["mask"]
  kl = _token_mean(kl_estimate(outputs["logprobs"], batch["ref_logprobs"],
                               str(cfg.get("kl_estimator", "k3"))), mask)
  coef = batch.get("kl_coef", float(cfg.get("kl_coef", 0.0)))
  return LossOutput(total=coef * kl, metrics={"kl_loss": kl})


from cai_jax.losses import preference  # noqa: E402,F401  registers the DPO family
