"""Stage `sft`: SL-CAI JSONL -> fine-tuned policy (checkpoints, metrics, HF export).

  python -m cai_jax sft --config experiments/sft.py

Reads sft.data (default: this workdir's sl_data/sl_cai.jsonl), writes
<workdir>/sft/ (checkpoints/, metrics.jsonl, tb/, summary.json) and, unless
sft.export_hf == "none", the policy as HF safetensors (default <workdir>/sft/hf).
A rerun resumes from the newest readable checkpoint, data iterator included, and is
refused when the data or a setting that shapes the weights changed; a second run on
the same workdir at once is refused.
The loss is sft.loss (a registry name; config.loss_modules is imported first).
With checkpoint.enabled the constitutional checkpoint watches the policy's drift
from the starting model and pauses the run past a threshold (stages/guarding.py;
exit code 3 from the CLI; rerun with --config.checkpoint.ack=<alert id>).
"""

from __future__ import annotations

import logging
import pathlib

from cai_jax import losses, weights
from cai_jax.data import fingerprint
from cai_jax.data.pipeline import DataReport, read_sl_cai, tokenize_examples
from cai_jax.stages import common, guarding
from cai_jax.train import loop, sft

log = logging.getLogger(__name__)


def data_paths(spec: str, default: pathlib.Path, workdir: pathlib.Path) -> list[pathlib.Path]:
  """sft.data: comma-separated paths (relative ones found as given, else under the workdir)."""
  out = []
  for p in (s.strip() for s in (spec or str(default)).split(",") if s.strip()):
    path = pathlib.Path(p)
    out.append(path if path.is_absolute() or path.exists() else workdir / path)
  return out


def run(config) -> dict:
  c, layout = config.sft, common.layout(config)
  losses.import_loss_modules(config.loss_modules)
  # The data first: a bad file fails before the model loads.
  report = DataReport()
  paths = data_paths(c.data, layout.sl_data, layout.root)
  examples = read_sl_cai(paths, rounds=c.rounds, on_error=c.on_error, report=report)
  train, held = sft.split_heldout(examples, c.eval_fraction, c.seed)
  settings = sft.SFTSettings(
      optim=c.optim.to_dict(), seq_len=c.seq_len, pack=c.pack, batch_size=c.batch_size,
      num_steps=c.num_steps, helpful_fraction=c.helpful_fraction, eval_every=c.eval_every,
      checkpoint_every=c.checkpoint_every, keep=c.keep, log_every=c.log_every, loss=c.loss,
      seed=c.seed)
  described = common.training_settings(
      config, settings, {"sl_data": (",".join(map(str, paths)), examples)})
  with fingerprint.stage_lock(layout.stage_dir("sft")):
    common.check_training_settings(layout, "sft", described)
    return _train(config, layout, settings, train, held, report, paths)


def _train(config, layout, settings, train, held, report, paths) -> dict:
  c = config.sft
  mesh = common.mesh(config)
  loaded = common.load(config, mesh, rules="train")
  common.say_start_model("sft", loaded.source, "config.model")
  tok, chat = loaded.tokenizer, loaded.chat
  items = tokenize_examples(train, tok, chat, c.seq_len, on_error=c.on_error, report=report)
  held_items = tokenize_examples(held, tok, chat, c.seq_len, on_error=c.on_error, report=report)
  log.info("sft: data from %s; %s", ", ".join(map(str, paths)), report.summary())
  guards = guarding.hooks(config, "sft", loaded, mesh, layout.stage_dir("sft"))
  with loop.attached_hooks(guards):
    state, summary = sft.fine_tune(loaded, items, held_items, settings, layout.stage_dir("sft"), mesh)
  export = None
  if c.export_hf != "none":
    export = pathlib.Path(c.export_hf) if c.export_hf else layout.sft_export
    weights.export_hf_from_devices(export, loaded.cfg, state.params, tok)
    log.info("sft: exported HF safetensors to %s", export)
  summary.update(loss=c.loss, data=report.summary(), skipped=dict(report.skipped),
                 export_hf=str(export) if export else None, checkpoint=guarding.summary(guards))
  return common.finish("sft", summary, layout.summary("sft"))
