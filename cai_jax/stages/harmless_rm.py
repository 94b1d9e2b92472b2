"""Stage `harmless-rm`: the evaluator behind the harmlessness score, a reward model trained
on HUMAN harmlessness comparisons only (hh-rlhf harmless-base).

  python -m cai_jax harmless-rm --config experiments/embedded.py --config.harmless.num_steps=200

The trunk is always config.model, never the SFT policy, and no AI labels are
mixed in: the evaluator must share nothing with the policy's training.
Reads harmless.data ({"chosen", "rejected"} transcripts; first harmless.n_pairs);
writes <workdir>/harmless_rm/ (checkpoints/, metrics.jsonl, tb/, summary.json,
model/); a rerun resumes, and is refused when the pairs or a setting that shapes
the weights changed (checkpoints/settings.json); a second run at once is refused.
Summary: held-out pair accuracy (95% Wilson interval), Brier score and ECE,
n_train, n_heldout, steps.
"""

from __future__ import annotations

import pathlib

from cai_jax.data import fingerprint
from cai_jax.data import preferences as prefs
from cai_jax.evals.multiple_choice import wilson_interval
from cai_jax.stages import common
from cai_jax.train import reward

STAGE = "harmless-rm"


def missing_inputs(config) -> str | None:
  """Why this stage cannot run (the pipeline skips it, loudly), or None."""
  return common.missing_file(config.harmless.data, "harmless.data", "human harmlessness pairs "
                            "(hh-rlhf harmless-base, MIT licence, github.com/anthropics/hh-rlhf)")


def load_pairs(config) -> list[prefs.Pair]:
  """harmless.data as preference pairs (chosen side at a or b at random, seeded)."""
  c = config.harmless
  path = common.repo_path(c.data)
  if not path or not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"harmless.data: no file at {path!r}; expected hh-rlhf harmless-base "
                            "JSONL(.gz) of {\"chosen\", \"rejected\"} transcripts (e.g. "
                            "../shared/data/hh_rlhf/harmless-base-test.jsonl.gz)")
  pairs = prefs.load_hh_pairs(path, c.n_pairs, c.seed)
  if not pairs:
    raise ValueError(f"harmless.data: {path} holds no pairs")
  return pairs


def run(config) -> dict:
  c, layout = config.harmless, common.layout(config)
  common.check_batch_divides_mesh(config, "harmless.batch_size")
  pairs = load_pairs(config)
  settings = reward.RMSettings(
      optim=c.optim.to_dict(), max_len=c.max_len, batch_size=c.batch_size, num_steps=c.num_steps,
      human_fraction=1.0, eval_fraction=c.eval_fraction, eval_every=c.eval_every,
      checkpoint_every=c.checkpoint_every, keep=c.keep, seed=c.seed)
  described = common.training_settings(config, settings, {"human": (common.repo_path(c.data), pairs)})
  # train_reward_model holds out the same pairs (a hash of each id); counted here for the summary.
  train, held = prefs.split_heldout(pairs, c.eval_fraction, c.seed)
  with fingerprint.stage_lock(layout.stage_dir(STAGE)):
    common.check_training_settings(layout, STAGE, described)
    mesh = common.mesh(config)
    trunk = common.load(config, mesh, rules="train")
    common.say_start_model(f"{STAGE} (trunk)", trunk.source,
                           "config.model; never the SFT policy, so the evaluator is independent")
    metrics = reward.train_reward_model(trunk, [], pairs, settings, layout.stage_dir(STAGE), mesh)
  summary = dict(model=trunk.source, data=common.repo_path(c.data), n_train=len(train),
                 n_heldout=len(held), steps=metrics["step"], heldout_accuracy=None,
                 heldout_accuracy_ci95=None, heldout_brier=None, heldout_ece=None)
  if held:
    accuracy = metrics["human_accuracy"]  # hh pairs are all decided, so over all held-out pairs
    summary.update(heldout_accuracy=accuracy,
                   heldout_accuracy_ci95=list(wilson_interval(round(accuracy * len(held)), len(held))),
                   heldout_brier=metrics["human_brier"], heldout_ece=metrics["human_ece"])
  return common.finish(STAGE, summary, layout.summary(STAGE))
