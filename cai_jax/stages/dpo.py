"""Stage `dpo`: the policy trained directly on preference pairs, in place of rm + ppo.

  python -m cai_jax dpo --config experiments/tiny.py --config.dpo.num_steps=20

Reads dpo.data (default: this workdir's feedback/feedback.jsonl, the AI labels
with their probabilities; "none" = no AI pairs) and dpo.human_data (hh-rlhf
JSONL); the policy starts from dpo.policy (default this workdir's SFT export if
present, else config.model) and the frozen reference is dpo.reference (default
the starting policy). The loss is dpo.loss from the registry (dpo, ipo,
soft_dpo, robust_dpo). Writes <workdir>/dpo/ (checkpoints/, metrics.jsonl, tb/,
reference_logprobs.npz, curves.png, summary.json, hf/: the trained policy as HF
safetensors); a rerun resumes bit-identically, and is refused when the data or a
setting that shapes the weights changed; a second run on the same workdir at once is refused. With checkpoint.enabled the
constitutional checkpoint watches the policy's drift from the starting policy
(stages/guarding.py; a pause exits with code 3 until acknowledged).
"""

from __future__ import annotations

import logging
import pathlib

from cai_jax import losses, report
from cai_jax.data import fingerprint
from cai_jax.data import preferences as prefs
from cai_jax.stages import common, guarding
from cai_jax.train import dpo, loop

logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it renames
CURVES = ("loss", "reward_accuracy", "reward_margin", "eval/reward_accuracy")


def read_pairs(c, layout) -> dict[str, tuple[str, list[prefs.Pair]]]:
  """{"ai": (dpo.data path, its pairs), "human": (dpo.human_data path, its pairs)}; an error
  naming the files when both are empty."""
  ai_path = {"": str(layout.feedback), "none": ""}.get(c.data, c.data)
  if ai_path and not pathlib.Path(ai_path).is_file():
    raise FileNotFoundError(f"dpo.data: no preference file at {ai_path} (run the feedback stage, "
                            "or set dpo.data / dpo.human_data)")
  ai = prefs.load_preference_jsonl(ai_path) if ai_path else []
  human_path = common.repo_path(c.human_data) if c.human_data else ""
  human = prefs.load_hh_pairs(human_path, c.n_human, c.seed) if human_path else []
  if not ai and not human:
    read = " and ".join(p for p in (ai_path, human_path) if p) or "nothing (dpo.data is 'none')"
    raise ValueError(f"dpo.data / dpo.human_data: no preference pairs in {read}; expected at "
                     "least one JSONL record with a prompt, two answers and a label")
  return {"ai": (ai_path, ai), "human": (human_path, human)}


def run(config) -> dict:
  c, layout = config.dpo, common.layout(config)
  losses.import_loss_modules(config.loss_modules)  # a user's loss named in dpo.loss
  data = read_pairs(c, layout)  # the data first: a bad file fails before the model loads
  pairs = data["ai"][1] + data["human"][1]
  source, why = layout.start_model(c.policy, config.model.source)
  settings = dpo.DPOSettings(
      optim=c.optim.to_dict(), loss=c.loss, beta=c.beta, tau=c.tau, label_noise=c.label_noise,
      max_len=c.max_len, batch_size=c.batch_size, num_steps=c.num_steps,
      eval_fraction=c.eval_fraction, eval_every=c.eval_every, checkpoint_every=c.checkpoint_every,
      keep=c.keep, log_every=c.log_every, seed=c.seed)
  described = common.training_settings(config, settings, data, source=source)
  described["reference"] = c.reference or source
  workdir = layout.stage_dir("dpo")
  with fingerprint.stage_lock(workdir):
    common.check_training_settings(layout, "dpo", described)
    return _train(config, layout, pairs, source, why, settings)


def _train(config, layout, pairs, source, why, settings) -> dict:
  c, workdir = config.dpo, layout.stage_dir("dpo")
  mesh = common.mesh(config)
  common.say_start_model("dpo (policy)", source, why)
  policy = common.load(config, mesh, rules="train", source=source)
  reference = (lambda: common.load(config, mesh, rules="train", source=c.reference)) if c.reference else None
  guards = guarding.hooks(config, "dpo", policy, mesh, workdir)
  with loop.attached_hooks(guards):
    summary = dpo.train_dpo(policy, pairs, settings, workdir, mesh, reference=reference,
                            reference_label=c.reference or source, export_to=layout.dpo_export)
  records = loop.read_metrics(layout.metrics("dpo"), "dpo")
  png = report.plot_stage(records, "dpo", workdir / "curves.png", keys=CURVES)
  summary.update(policy=source, reference=c.reference or source, curves=str(png) if png else None,
                 checkpoint=guarding.summary(guards))
  return common.finish("dpo", summary, layout.summary("dpo"))
