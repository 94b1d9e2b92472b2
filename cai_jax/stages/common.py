"""What every stage does with a config: the mesh, the model spec, sampler settings,
repository-relative paths, the run layout, and the summary line on stdout."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cai_jax import paths, sharding
from cai_jax.layout import RunLayout
from cai_jax.models.load import LoadedModel, ModelSpec, load_model
from cai_jax.sampling import SamplerSettings

log = logging.getLogger("cai_jax.stages")
REPO = pathlib.Path(__file__).resolve().parents[2]


def layout(config) -> RunLayout:
  """The run layout of config.workdir, checked first (`check_workdir`)."""
  check_workdir(config.workdir)
  return RunLayout(config.workdir)


def check_workdir(workdir: str) -> None:
  """Fails early, naming `workdir`, when a run could not write there: it (or a folder above
  it) is a file (NotADirectoryError), or the folder that would hold it is not writable
  (PermissionError). Touches nothing; a URL (gs://...) is checked when first written."""
  if paths.is_remote(workdir or ""):
    return
  path = pathlib.Path(workdir or ".").absolute()
  existing = path
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    where = "is a file" if existing == path else f"is inside {existing}, which is a file"
    raise NotADirectoryError(f"workdir: {workdir} {where}; expected a folder (or a path where "
                             "one can be made): set --config.workdir=DIR")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is" if existing == path else f"would be made in {existing}, which is"
    raise PermissionError(f"workdir: {workdir} {what} not writable; give --config.workdir a "
                          "folder you can write to")


def check_batch_divides_mesh(config, *fields: str) -> None:
  """Fails before any model is loaded when a batch size (dotted config fields, e.g. "rm.batch_size")
  cannot be split evenly over the mesh's batch axes (mesh.data x mesh.fsdp): ValueError naming
  the field, its value and the mesh fields. A mesh that does not fit the devices fails here too."""
  import jax

  from cai_jax import config as config_lib

  devices = jax.device_count()
  shape = sharding.resolve_mesh_shape(dict(config.mesh), devices)
  rows = shape["data"] * shape["fsdp"]
  for field in fields:
    value = config_lib.get_field(config, field)
    if value is not None and value % rows:
      raise ValueError(
          f"{field}: {value} rows cannot be split over the mesh's batch axes: mesh.data "
          f"{shape['data']} x mesh.fsdp {shape['fsdp']} = {rows} ({devices} devices; mesh "
          f"{dict(config.mesh)}); set {field} to a multiple of {rows} or change mesh.data / mesh.fsdp")


def mesh(config):
  """The configured device mesh (data / fsdp / tensor)."""
  return sharding.make_mesh(dict(config.mesh))


def eval_mesh(config):
  """A mesh only when there are several devices (evaluation runs unsharded on one)."""
  import jax
  return mesh(config) if jax.device_count() > 1 else None


# ----------------------------------------------------------------------------- hosts
# Generation stages split their items over the hosts of a multi-host run: item i is
# host i % count's (data/jsonl.py Host.share), each host samples on its own devices and
# writes its own shard, and host 0 merges the shards after a barrier. The workdir must be
# one that every host sees (gs://..., or a shared disk).


def host():
  """This process among the run's processes (jax.process_index / process_count)."""
  import jax

  from cai_jax.data.jsonl import Host
  return Host(jax.process_index(), jax.process_count())


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`; nothing to wait for on one."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def generation_mesh(config):
  """The mesh a generation stage samples on: with one process, `eval_mesh`; with several,
  config.mesh over this process's own devices, since each host samples its own prompts."""
  import jax
  if jax.process_count() == 1:
    return eval_mesh(config)
  local = jax.local_devices()
  return sharding.make_mesh(dict(config.mesh), devices=local) if len(local) > 1 else None


@contextlib.contextmanager
def generation_lock(directory, host_) -> Iterator[None]:
  """One run at a time in a generation stage's folder: process 0 holds its lock
  (data/fingerprint.py stage_lock) for the whole run; the other hosts write their shards."""
  from cai_jax.data import fingerprint
  if host_.index != 0:
    yield
    return
  with fingerprint.stage_lock(directory):
    yield


def check_output_settings(path, settings: dict, what: str, host_) -> str:
  """Refuses (ValueError naming the changed fields) to continue an output whose recorded
  settings (`path`, a <name>.settings.json) differ from `settings`; records them the first
  time (process 0). Every host checks, so all of them stop on a mismatch."""
  from cai_jax.data import fingerprint
  path = paths.as_path(path)
  remedy = f"use a new workdir, or delete {path.parent} to generate again"
  if path.is_file():
    fingerprint.check_settings(fingerprint.read_settings_file(path), settings, what, path, remedy)
  elif host_.index == 0:
    fingerprint.check_or_write(path, settings, what, remedy)
  barrier(f"{path}: settings recorded")
  return fingerprint.settings_fingerprint(settings)


def model_spec(config, source: str | None = None) -> ModelSpec:
  """config.model as a ModelSpec; `source` (a weights path) replaces the source and preset."""
  spec = ModelSpec(**config.model.to_dict())
  return spec if not source or source == spec.source else spec.replace(source=source, preset="")


def source_label(spec: ModelSpec) -> str:
  """The name a loaded model reports as its source (LoadedModel.source), known before loading."""
  if spec.source == "random":
    return f"random:{spec.preset}"
  if spec.source == "embedded":
    return "embedded"
  return str(pathlib.Path(spec.source).expanduser())


def answer_settings(config, spec: ModelSpec, settings: SamplerSettings) -> dict:
  """What decides a model's sampled answers (for fingerprints of answer files): the model,
  the sampler settings except the batch size (rows are seeded by their ids) and the seed."""
  sampler = dataclasses.asdict(settings)
  del sampler["batch_size"]
  return {"model": dataclasses.asdict(spec), "sampler": sampler, "seed": config.seed}


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


SETTINGS_FILE = "settings.json"  # a training stage's fingerprint, in its checkpoints folder
# Training settings that decide when things are logged, evaluated or saved, not the weights.
NOT_IN_FINGERPRINT = ("eval_every", "checkpoint_every", "keep", "log_every")


def data_hash(items: Sequence[Any]) -> str:
  """A fingerprint of training data: dataclass records (Pair, Example, ...) or JSON values."""
  from cai_jax.data import fingerprint
  return fingerprint.settings_fingerprint({"items": [_plain(x) for x in items]})


def _plain(x: Any) -> Any:
  """JSON-able form of a record: dataclasses as lists of fields, str subclasses as str
  (dataclasses.astuple deep-copies, which a str subclass with extra state cannot take)."""
  if dataclasses.is_dataclass(x):
    return [_plain(getattr(x, f.name)) for f in dataclasses.fields(x)]
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  return str(x) if isinstance(x, str) else x


def training_settings(config, settings: Any, data: Mapping[str, tuple[str, Sequence[Any]]],
                      source: str | None = None) -> dict:
  """What decides a training stage's weights, for `check_training_settings`: the starting
  model (config.model, or `source`), each data set {name: (path, records)} as its path,
  size and hash, and the stage's settings dataclass without NOT_IN_FINGERPRINT. Under a
  constant learning rate num_steps is left out too: the steps already taken do not depend
  on it, so a finished run may be extended (any other schedule decays over num_steps)."""
  train = {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_IN_FINGERPRINT}
  if (train.get("optim") or {}).get("schedule") == "constant":
    train.pop("num_steps", None)
  return {"model": dataclasses.asdict(model_spec(config, source)),
          "data": {name: {"path": str(path), "n": len(items), "hash": data_hash(items)}
                   for name, (path, items) in data.items()},
          "training": train}



def check_training_settings(layout_: RunLayout, stage: str, settings: dict) -> str:
  """Refuses (ValueError naming the changed fields) to resume training stage `stage` from
  checkpoints made with other settings; records `settings` beside the checkpoints otherwise.

  The record sits in <stage>/checkpoints/settings.json (orbax ignores the file). A record
  with no checkpoint beside it (a run that failed before its first save) is replaced;
  checkpoints with no record (an older version, or a deleted record) are refused."""
  import jax

  from cai_jax.data import fingerprint
  if jax.process_index() != 0:  # process 0 checks and records; a refusal stops the run there
    return ""
  directory = layout_.checkpoints(stage)
  path = directory / SETTINGS_FILE
  saved = directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
  start_over = f"use a new workdir, or delete {directory} to train {stage} again from step 0"
  if saved and not path.is_file():
    raise ValueError(f"{directory}: checkpoints without a record of the settings that made them "
                     f"({path} is missing), so resuming them could mix settings; {start_over}")
  if path.is_file() and not saved:
    path.unlink()
  return fingerprint.check_or_write(path, settings, f"the {stage} checkpoints in {directory}",
                                    start_over)


def repo_path(path: str) -> str:
  """A path as given if it exists, else relative to the repository (constitutions/...)."""
  if not path or path.startswith("paper:") or pathlib.Path(path).exists():
    return path
  candidate = REPO / path
  return str(candidate) if candidate.exists() else path


def missing_file(value: str, field: str, what: str) -> str | None:
  """A stage's `missing_inputs` for a data file the user brings: None when `value` (a config
  field's path) names a file, else why the stage cannot run and the setting that enables it."""
  path = repo_path(value)
  if path and paths.as_path(path).is_file():
    return None
  return f"no {what} at {field}={value!r}; bring it and set --config.{field}=PATH"


def limit(n: int) -> int | None:
  """-1 (all) -> None."""
  return None if n < 0 else n


def say_start_model(stage: str, source: str, why: str) -> None:
  log.info("%s: starting from %s (%s)", stage, source, why)


def finish(stage: str, summary: dict, path: pathlib.Path | None = None) -> dict:
  """Writes the summary (when `path` is given; process 0 of a multi-host run) and prints it
  as the last stdout line."""
  import jax

  summary = {"stage": stage, **{k: v for k, v in summary.items() if k != "stage"}}
  text = json.dumps(summary, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
  if path is not None and jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json.loads(text), indent=1))
  print(text, flush=True)
  return summary
