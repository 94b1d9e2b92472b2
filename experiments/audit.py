"""The self-audit of the embedded SmolLM2-135M-Instruct and the quickstart's SFT policy,
deployed under two profiles (EU healthcare; a creative-writing tool).

  python -m cai_jax audit --config experiments/audit.py               # EU healthcare, base model
  python -m cai_jax audit --config experiments/audit.py:sft           # ... the quickstart's SFT model
  python -m cai_jax audit --config experiments/audit.py:creative      # creative writing, base model
  python -m cai_jax audit --config experiments/audit.py:creative_sft  # ... the SFT model
  python -m cai_jax audit --config experiments/audit.py:tiny          # random tiny model, ~1 min
  python -m cai_jax audit --config experiments/audit.py:tiny \
      --config.audit.compare=runs/audit_eu/audit,runs/audit_eu_sft/audit   # paired, McNemar

The base-model variants build the battery (writer: the base model; seed 0) and the SFT
variants reuse it (audit.battery), so each pair answers the very same items; run the
base variant first, and `python -m cai_jax pipeline --config experiments/quickstart.py`
for runs/quickstart/sft/hf. The two deployments' batteries share most of the universal
principles' items (same ids and requests), so they compare too. One model per run keeps
each run near 10 minutes on 2 CPU cores; with more compute, audit both at once with
--config.audit.models=embedded,runs/quickstart/sft/hf. Sampling at T 0.7 with 48 new
tokens per turn, the refusal classifier's rules back end.
"""

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "sft", "creative", "creative_sft", "tiny")
SFT = "runs/quickstart/sft/hf"


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  config.workdir = "runs/audit_eu"
  config.model.source = "embedded"
  config.model.system_prompt = ""  # the deployment's prompt is the system message
  config.sampler.temperature = 0.7  # at T = 1 the 135M model's text falls apart
  config.sampler.max_prompt_len = 1024
  config.sampler.batch_size = 16
  config.constitution.profiles = "eu_healthcare"
  a = config.audit
  a.models = "embedded"
  a.items_per_family, a.route_items, a.honour_items, a.model_scenarios = 100, 3, 4, 2
  a.max_new_tokens = 48
  if variant in ("creative", "creative_sft"):
    config.workdir = "runs/audit_creative"
    config.constitution.profiles = "creative_writing"
  if variant in ("sft", "creative_sft"):
    a.battery = f"{config.workdir}/audit/battery.jsonl"  # the base variant's
    config.workdir += "_sft"
    a.models = SFT
  if variant == "tiny":
    config.workdir = "runs/audit_tiny"
    use_tiny_model(config, chat_template="chatml")
    config.sampler.max_prompt_len = 512
    a.models = ""
    a.items_per_family, a.route_items, a.honour_items, a.model_scenarios = 5, 1, 1, 1
    a.max_new_tokens = 8
  return config
