"""The one place every config field gets its default and its check.

Experiments (`experiments/*.py`) are `get_config` functions decorated with
`experiment_config`: they receive `base_config()` and change what they need; the
CLI then applies `--config.a.b=c` overrides. The ConfigDict is locked, so a
misspelt field in an experiment file or on the command line is an error that
names it with a did-you-mean. `validate(config)` checks values once, at start-up.

Each section lives in one module of this package beside its validator
(`@section("sft")` + `@validator("sft")`): run.py (model, mesh, distributed,
sampler, pipeline, generate), method.py (sl_data, feedback), training.py (sft, rm,
ppo, dpo), evals.py (eval, refusal, safety, harmless, drift), constitution.py
(constitution, audit), guard.py (checkpoint), sweep.py (sweep), scale.py (plan). Importing this
package registers them all.
"""

from cai_jax.config.core import (LOSS_FIELDS, ConfigDict, apply_overrides, as_experiment,
                                 base_config, experiment_config, flat_fields, get_field,
                                 optim_section, restore, section, sibling_module, use_tiny_model,
                                 validate, validate_optim, validator)
from cai_jax.config import run, method, training, evals  # noqa: F401,E402  (register sections)
from cai_jax.config import constitution, guard, sweep, scale  # noqa: F401,E402

__all__ = ["LOSS_FIELDS", "ConfigDict", "apply_overrides", "as_experiment", "base_config",
           "experiment_config", "flat_fields", "get_field", "restore", "optim_section", "section",
           "sibling_module", "use_tiny_model", "validate", "validate_optim", "validator"]
