"""What every stage does with a config: the mesh, the model spec, sampler settings,
repository-relative paths, the run layout, and the summary line on stdout."""

from __future__ import annotations

import json
import logging
import pathlib

from cai_jax import sharding
from cai_jax.layout import RunLayout
from cai_jax.models.load import LoadedModel, ModelSpec, load_model
from cai_jax.sampling import SamplerSettings

log = logging.getLogger("cai_jax.stages")
REPO = pathlib.Path(__file__).resolve().parents[2]


def layout(config) -> RunLayout:
  return RunLayout(config.workdir)


def mesh(config):
  """The configured device mesh (data / fsdp / tensor)."""
  return sharding.make_mesh(dict(config.mesh))


def eval_mesh(config):
  """A mesh only when there are several devices (evaluation runs unsharded on one)."""
  import jax
  return mesh(config) if jax.device_count() > 1 else None


def model_spec(config, source: str | None = None) -> ModelSpec:
  """config.model as a ModelSpec; `source` (a weights path) replaces the source and preset."""
  spec = ModelSpec(**config.model.to_dict())
  return spec if not source or source == spec.source else spec.replace(source=source, preset="")


def load(config, mesh_, rules: str, source: str | None = None) -> LoadedModel:
  return load_model(model_spec(config, source), mesh_, rules=rules)


def sampler_settings(config, **overrides) -> SamplerSettings:
  """config.sampler as SamplerSettings, with `overrides` (e.g. max_new_tokens)."""
  return SamplerSettings(**{**config.sampler.to_dict(), **overrides})


def judge_settings(config) -> SamplerSettings:
  """Sampler settings for config.model reading a long multiple-choice prompt (eval-hhh, the
  refusal judge): eval.batch_size rows, at least eval.max_prompt_len prompt tokens."""
  return sampler_settings(config, batch_size=config.eval.batch_size,
                          max_prompt_len=max(config.sampler.max_prompt_len, config.eval.max_prompt_len))


def repo_path(path: str) -> str:
  """A path as given if it exists, else relative to the repository (constitutions/...)."""
  if not path or path.startswith("paper:") or pathlib.Path(path).exists():
    return path
  candidate = REPO / path
  return str(candidate) if candidate.exists() else path


def limit(n: int) -> int | None:
  """-1 (all) -> None."""
  return None if n < 0 else n


def say_start_model(stage: str, source: str, why: str) -> None:
  log.info("%s: starting from %s (%s)", stage, source, why)


def finish(stage: str, summary: dict, path: pathlib.Path | None = None) -> dict:
  """Writes the summary (when `path` is given) and prints it as the last stdout line."""
  summary = {"stage": stage, **{k: v for k, v in summary.items() if k != "stage"}}
  text = json.dumps(summary, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json.loads(text), indent=1))
  print(text, flush=True)
  return summary
