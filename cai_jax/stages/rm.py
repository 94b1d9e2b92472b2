"""Stage `rm`: a reward model trained on AI (and optionally human) preference pairs.

  python -m cai_jax rm --config experiments/embedded.py --config.rm.num_steps=50

Reads rm.ai_data (default: this workdir's feedback/feedback.jsonl; "none" = no
AI pairs) and rm.human_data (hh-rlhf JSONL); the trunk starts from rm.init
(default config.model). Writes <workdir>/rm/ (checkpoints/, metrics.jsonl,
tb/, summary.json, model/); a rerun resumes, and is refused when the data or a
setting that shapes the weights changed (checkpoints/settings.json records them);
a second run on the same workdir at once is refused. Multi-host (config.distributed): every
host draws the same global batches and feeds its devices their rows; process 0 holds the
lock, writes the settings record, metrics and summary. The loss is rm.loss (a
registry name; config.loss_modules is imported first), recorded in the summary.
"""

from __future__ import annotations

import contextlib

import jax

from cai_jax import losses
from cai_jax.data import fingerprint
from cai_jax.data import preferences as prefs
from cai_jax.stages import common
from cai_jax.train import reward


def run(config) -> dict:
  c, layout = config.rm, common.layout(config)
  common.check_batch_divides_mesh(config, "rm.batch_size")
  losses.import_loss_modules(config.loss_modules)
  # The data first: a bad file fails before the model loads.
  ai_path = {"": str(layout.feedback), "none": ""}.get(c.ai_data, c.ai_data)
  ai = prefs.load_preference_jsonl(ai_path) if ai_path else []
  human = prefs.load_hh_pairs(c.human_data, c.n_human, c.seed) if c.human_data else []
  if not ai and not human:
    raise ValueError(f"rm.ai_data / rm.human_data: no preference pairs ({ai_path or 'no AI data'}"
                     f"{', ' + c.human_data if c.human_data else ''}); expected at least one pair")
  settings = reward.RMSettings(
      optim=c.optim.to_dict(), loss=c.loss, max_len=c.max_len, batch_size=c.batch_size,
      num_steps=c.num_steps, human_fraction=c.human_fraction, eval_fraction=c.eval_fraction,
      eval_every=c.eval_every, checkpoint_every=c.checkpoint_every, keep=c.keep, seed=c.seed)
  described = common.training_settings(config, settings, {"ai": (ai_path, ai),
                                                           "human": (c.human_data, human)},
                                        source=c.init or None)
  # One lock and one settings record per run: in a multi-host run (hosts sharing the workdir)
  # process 0 takes them; the others would find the folder locked by their own run.
  primary = jax.process_index() == 0
  with fingerprint.stage_lock(layout.stage_dir("rm")) if primary else contextlib.nullcontext():
    if primary:
      common.check_training_settings(layout, "rm", described)
    mesh = common.mesh(config)
    trunk = common.load(config, mesh, rules="train", source=c.init or None)
    common.say_start_model("rm (trunk)", trunk.source, "rm.init" if c.init else "config.model")
    summary = reward.train_reward_model(trunk, ai, human, settings, layout.stage_dir("rm"), mesh)
  summary["loss"] = c.loss
  return common.finish("rm", summary, layout.summary("rm") if primary else None)
