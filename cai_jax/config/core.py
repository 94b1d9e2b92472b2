"""The config machinery: section and validator registries, experiments, overrides.

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


# section name -> function returning its fields with their defaults, in registration order.
_SECTIONS: dict[str, Callable[[], ConfigDict]] = {}


def section(name: str):
  """Registers the default-fields function of config section `name` (config/<group>.py)."""
  def register(fn):
    _SECTIONS[name] = fn
    return fn
  return register


def base_config() -> ConfigDict:
  """Every field, with its default, locked: the top-level fields and one entry per section."""
  config = ConfigDict()
  config.workdir = "runs/default"
  config.seed = 0
  # Comma-separated module paths or .py files imported before any loss is looked up, so a
  # loss registered there with @register_loss can be named in sft.loss, ppo.policy_loss, ...
  config.loss_modules = ""
  for name, fn in _SECTIONS.items():
    config[name] = fn()
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


def sibling_module(file: str, name: str):
  """The module `<name>.py` in the folder of `file`, loaded by path: experiment files are
  loaded by path rather than as a package, and share helpers this way."""
  import importlib.util
  path = pathlib.Path(file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"experiments_{path.parent.name}_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def use_tiny_model(config: ConfigDict, chat_template: str = "transcript") -> ConfigDict:
  """Points `config.model` at a fresh random `tiny` model with the byte tokenizer (tests, smoke runs)."""
  config.model.source = "random"
  config.model.preset = "tiny"
  config.model.tokenizer = "bytes"
  config.model.chat_template = chat_template
  return config


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


def flat_fields(config: ConfigDict, prefix: str = "") -> dict[str, object]:
  """{"sft.optim.lr": 1e-5, ...}: every leaf field by its dotted name."""
  out = {}
  for k, v in config.items():
    name = f"{prefix}{k}"
    if isinstance(v, ConfigDict):
      out.update(flat_fields(v, name + "."))
    else:
      out[name] = v
  return out


def restore(fields: Mapping[str, object]) -> ConfigDict:
  """A locked, validated config from `flat_fields` output (base_config + those values)."""
  return validate(apply_overrides(base_config(), dict(fields)))


def as_experiment(config: ConfigDict, note: str = "") -> str:
  """Python source of an experiment file that rebuilds `config` exactly: a run's saved
  config, itself launchable with `--config <file>`."""
  import pprint
  body = pprint.pformat(flat_fields(config), indent=1, width=100, sort_dicts=True)
  return (f'"""{note or "A saved run config"} (written by cai_jax; rerun with --config <this file>)."""\n\n'
          "from cai_jax.config import restore\n\n"
          f"FIELDS = {body}\n\n\n"
          "def get_config():\n"
          "  return restore(FIELDS)\n")
