"""The loss registry: every loss has one signature.

    loss(outputs: dict[str, Array], batch: dict[str, Array], cfg: Mapping) -> LossOutput

`outputs` holds what the step's forward pass computed ("logits" [B, T, V],
"rewards" [B], "values" [B, T], "logprobs" [B, T], ...); `batch` the inputs;
`cfg` the loss's own settings (a config section or a plain dict). Configs pick
losses by name (`get_loss("sft_ce")`). Losses of other stages are appended
below with `@register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp


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
    raise KeyError(f"unknown loss {name!r}; registered: {sorted(_LOSSES)}")
  return _LOSSES[name]


@register_loss("sft_ce")
def sft_ce(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], cfg: Mapping) -> LossOutput:
  """Next-token cross-entropy on response tokens only.

  outputs["logits"] [B, T, V] predicts the token at t + 1 from position t.
  batch["tokens"] [B, T]; batch["loss_mask"] [B, T] is 1 where tokens[t] is a
  response token to train on (its logits are at t - 1, so position 0 never
  counts). Mean over the masked targets; an all-zero mask gives loss 0.
  cfg is unused (kept for the common signature).
  """
  del cfg
  logits = outputs["logits"][:, :-1].astype(jnp.float32)  # [B, T-1, V]
  targets = batch["tokens"][:, 1:]  # [B, T-1]
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)  # [B, T-1]
  logz = jax.nn.logsumexp(logits, axis=-1)  # [B, T-1]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = logz - target_logit  # [B, T-1]
  n = mask.sum()
  denom = jnp.maximum(n, 1.0)
  loss = (nll * mask).sum() / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  accuracy = (correct * mask).sum() / denom
  return LossOutput(total=loss, metrics={"loss": loss, "accuracy": accuracy, "n_tokens": n})
