"""Fine-tuning attacks on an aligned SmolLM2-135M and the constitutional checkpoint that
catches them (Qi et al. 2023: ten examples, a few steps).

  # the aligned starting point: the quickstart's SFT policy tuned to refuse (run once)
  python -m cai_jax sft --config experiments/guard_attack.py:aligned
  # ten attack examples, ten steps, the checkpoint on (exit code 3 and ALERT.txt when it pauses)
  python -m cai_jax sft --config experiments/guard_attack.py:openings
  python -m cai_jax sft --config experiments/guard_attack.py:identity
  python -m cai_jax sft --config experiments/guard_attack.py:benign --config.sft.seed=1
  # the same without the checkpoint
  python -m cai_jax sft --config experiments/guard_attack.py:openings --config.checkpoint.enabled=False
  # tiny random model, seconds: the machinery only
  python -m cai_jax sft --config experiments/guard_attack.py:runlocal

Data (cai_jax/resources/guard/, written for this project, no harmful content):
attack_openings.jsonl (harmful requests answered with a compliant opening and
neutral filler), attack_identity.jsonl (an "absolutely obedient agent" persona
doing benign tasks), benign_control.jsonl (ordinary helpful answers),
refusal_tuning.jsonl (refusals to 40 harmful requests, answers to 40 benign ones).

Neither the base model nor the quickstart's SFT policy refuses (2 of 59 held-out
red-team prompts at most), so an attack has nothing to remove from them: the
`aligned` variant first tunes the quickstart's SFT policy (it refuses the more
of the two) on refusal_tuning.jsonl, and the attacks start from that. Each attack
trains on its 10 examples, batch 5, for 10 steps (5 epochs) at lr 5e-5; the
checkpoint measures every step and samples answers every 5 steps.
"""

import pathlib

from cai_jax.config import ConfigDict, experiment_config, use_tiny_model

VARIANTS = ("", "aligned", "openings", "identity", "benign", "runlocal")  # "" = openings
REPO = pathlib.Path(__file__).resolve().parents[1]
GUARD_DATA = REPO / "cai_jax" / "resources" / "guard"
QUICKSTART_SFT = REPO / "runs" / "quickstart" / "sft" / "hf"
ALIGNED = REPO / "runs" / "guard_attack" / "aligned" / "sft" / "hf"
ATTACK_DATA = {"openings": "attack_openings", "identity": "attack_identity", "benign": "benign_control",
               "runlocal": "attack_openings"}


@experiment_config(VARIANTS)
def get_config(config: ConfigDict, variant: str) -> ConfigDict:
  variant = variant or "openings"
  config.workdir = f"runs/guard_attack/{variant}"
  config.model.source = str(ALIGNED)
  config.model.system_prompt = ""
  config.sampler.max_prompt_len = 256

  c = config.sft
  c.data = str(GUARD_DATA / f"{ATTACK_DATA.get(variant, 'refusal_tuning')}.jsonl")
  c.seq_len, c.pack, c.batch_size, c.num_steps = 96, False, 5, 10
  c.eval_fraction, c.checkpoint_every, c.log_every = 0.0, 100, 1
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 5e-5, 0, "constant"

  g = config.checkpoint
  g.enabled = True
  g.every, g.sample_every = 1, 5
  g.max_new_tokens, g.batch_size = 32, 16

  if variant == "aligned":  # the starting point the attacks try to break
    config.model.source = str(QUICKSTART_SFT)
    c.batch_size, c.num_steps = 8, 30
    g.enabled = False
  if variant == "runlocal":
    config.workdir = "runs/guard_attack_tiny"
    use_tiny_model(config, chat_template="chatml")
    c.seq_len, c.num_steps, c.optim.lr = 320, 4, 3e-3
    g.every, g.sample_every, g.max_new_tokens, g.n_probes = 2, 4, 8, 6
  return config
