"""RunLayout: every stage's inputs and outputs under one workdir, named once.

A run (one stage alone, or the pipeline) writes into one workdir; each stage
owns one folder in it. This docstring is the documented tree (the pipeline test
checks a real run against `RunLayout.expected_tree()`):

  <workdir>/
    harmless_rm/{checkpoints,metrics.jsonl,tb,summary.json,model}/   stage harmless-rm: the evaluator
    sl_data/sl_cai.jsonl                 stage sl-data: prompts, answers, critiques, revisions
    sl_data/sl_cai.settings.json         the settings that made them (a rerun with others is refused)
    sl_data/summary.json                 refusal classes and harmlessness per revision round
    sft/checkpoints/<step>/              stage sft: orbax TrainStates (resume by rerunning)
    sft/metrics.jsonl  sft/tb/           per-step metrics (JSONL + TensorBoard)
    sft/summary.json  sft/hf/            summary; the fine-tuned policy as HF safetensors
    feedback/feedback.jsonl              stage feedback: AI preference labels
    feedback/feedback.settings.json      the settings that made them
    rm/checkpoints/  rm/metrics.jsonl  rm/tb/  rm/summary.json
    rm/model/                            the trained reward model (models/reward.py)
    ppo/checkpoints/  ppo/metrics.jsonl  ppo/tb/  ppo/summary.json  ppo/curves.png
    ppo/hf/                              the PPO-trained policy as HF safetensors
    dpo/checkpoints/  dpo/metrics.jsonl  dpo/tb/  dpo/summary.json  dpo/curves.png   stage dpo
    dpo/reference_logprobs.npz  dpo/hf/  the reference's answer log-probs (once); the DPO policy
    eval/hhh.json  eval/hhh.png          stage eval-hhh (eval-refusal: eval/refusal_<backend>.json)
    safety/safety.json  safety/frontier.png  safety/answers_<i>_<model>.jsonl    stage eval-safety
    harmless/harmless.json  harmless/answers.jsonl  harmless/harmless.png   stage eval-harmless
    drift/drift.json  drift/kl_by_position.png                              stage eval-drift
    plots/<stage>.png  report.md  summary.json     stage pipeline: the report

The workdir may be a URL (gs://bucket/run): paths are then etils.epath.Path objects
(cai_jax/paths.py), local ones stay pathlib.Path.

The rule for which model a stage starts from lives here too (`start_model`):
an explicit setting wins, else the SFT export of this workdir if it exists,
else the experiment's base model.
"""

from __future__ import annotations

import dataclasses
import os

from cai_jax import paths

# stage name -> its folder under the workdir (the pipeline writes the report at the top).
STAGE_DIRS = {"sl-data": "sl_data", "sft": "sft", "feedback": "feedback", "rm": "rm",
              "ppo": "ppo", "eval-hhh": "eval", "eval-mc": "eval", "eval-refusal": "eval",
              "eval-safety": "safety", "harmless-rm": "harmless_rm", "eval-harmless": "harmless",
              "eval-drift": "drift", "dpo": "dpo", "audit": "audit",
              "sweep": "sweep", "plan": "plan"}
TRAINING_STAGES = ("sft", "rm", "ppo", "dpo")  # the ones that write metrics.jsonl through the loop


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Paths of one run; nothing is created by looking."""

  root: paths.AnyPath

  def __init__(self, root: str | os.PathLike):
    object.__setattr__(self, "root", paths.as_path(root))

  def stage_dir(self, stage: str) -> paths.AnyPath:
    if stage not in STAGE_DIRS:
      raise KeyError(f"no stage {stage!r} in the run layout; stages: {sorted(STAGE_DIRS)}")
    return self.root / STAGE_DIRS[stage]

  # ---------------------------------------------------------------- each stage's files
  @property
  def sl_data(self) -> paths.AnyPath:
    """SL-CAI records (stage sl-data's output, stage sft's input)."""
    return self.stage_dir("sl-data") / "sl_cai.jsonl"

  @property
  def sft_export(self) -> paths.AnyPath:
    """The fine-tuned policy as HF safetensors (stage sft's output)."""
    return self.stage_dir("sft") / "hf"

  @property
  def ppo_export(self) -> paths.AnyPath:
    """The PPO-trained policy as HF safetensors (stage ppo's output)."""
    return self.stage_dir("ppo") / "hf"

  @property
  def dpo_export(self) -> paths.AnyPath:
    """The DPO-trained policy as HF safetensors (stage dpo's output)."""
    return self.stage_dir("dpo") / "hf"

  @property
  def feedback(self) -> paths.AnyPath:
    """AI preference labels (stage feedback's output, stage rm's input)."""
    return self.stage_dir("feedback") / "feedback.jsonl"

  @staticmethod
  def settings_of(output: paths.AnyPath) -> paths.AnyPath:
    """The fingerprint file beside a generation stage's output: <name>.settings.json."""
    return output.with_name(f"{output.name.split('.')[0]}.settings.json")

  @property
  def reward_model(self) -> paths.AnyPath:
    """The trained reward model (stage rm's output; ppo's and eval-hhh's input)."""
    return self.stage_dir("rm") / "model"

  @property
  def harmless_model(self) -> paths.AnyPath:
    """The evaluator reward model for the harmlessness score (stage harmless-rm's output)."""
    return self.stage_dir("harmless-rm") / "model"

  def checkpoints(self, stage: str) -> paths.AnyPath:
    return self.stage_dir(stage) / "checkpoints"

  def summary(self, stage: str) -> paths.AnyPath:
    return self.stage_dir(stage) / "summary.json"

  def metrics(self, stage: str) -> paths.AnyPath:
    return self.stage_dir(stage) / "metrics.jsonl"

  def config_file(self, stage: str) -> paths.AnyPath:
    """The config a stage last ran with, as a launchable experiment file (configs/<stage>.py)."""
    return self.root / "configs" / f"{stage.replace('-', '_')}.py"

  @property
  def hhh(self) -> paths.AnyPath:
    return self.stage_dir("eval-hhh") / "hhh.json"

  @property
  def report(self) -> paths.AnyPath:
    return self.root / "report.md"

  @property
  def plots(self) -> paths.AnyPath:
    return self.root / "plots"

  def figures(self) -> list[paths.AnyPath]:
    """The evaluation stages' figures, for the report (whether or not they exist)."""
    return [self.stage_dir("eval-hhh") / "hhh.png", self.stage_dir("eval-safety") / "frontier.png",
            self.stage_dir("eval-harmless") / "harmless.png",
            self.stage_dir("eval-drift") / "kl_by_position.png"]

  def metrics_files(self) -> list[paths.AnyPath]:
    """The training stages' metrics.jsonl files that exist, in pipeline order."""
    return [self.metrics(s) for s in TRAINING_STAGES if self.metrics(s).is_file()]

  # ---------------------------------------------------------------- which model
  def start_model(self, explicit: str, base: str) -> tuple[str, str]:
    """(model source, why) for a stage that continues from the SFT policy: `explicit` when
    set, else this workdir's SFT export when it exists, else `base` (config.model.source)."""
    if explicit:
      return explicit, "set in the config"
    if self.sft_export.is_dir():
      return str(self.sft_export), "the SFT export of this workdir"
    return base, f"no SFT export at {self.sft_export}, so the base model"

  # ---------------------------------------------------------------- the documented tree
  @staticmethod
  def expected_tree(stages) -> dict[str, set[str]]:
    """Folder (relative to the workdir, "" = top) -> the entries a run of `stages` leaves
    there: names of files, of folders with a trailing "/", and fnmatch patterns for the
    per-model files (answers_*.jsonl)."""
    train = {"checkpoints/", "metrics.jsonl", "tb/", "summary.json"}
    per_stage = {
        "harmless-rm": {"harmless_rm": train | {"model/"}},
        "sl-data": {"sl_data": {"sl_cai.jsonl", "sl_cai.settings.json", "summary.json"}},
        "sft": {"sft": train | {"hf/"}},
        "feedback": {"feedback": {"feedback.jsonl", "feedback.settings.json"}},
        "rm": {"rm": train | {"model/"}},
        "ppo": {"ppo": train | {"curves.png", "hf/"}},
        "dpo": {"dpo": train | {"reference_logprobs.npz", "curves.png", "hf/"}},
        "eval-hhh": {"eval": {"hhh.json", "hhh.png"}},
        "eval-safety": {"safety": {"safety.json", "frontier.png", "answers_*.jsonl"}},
        "eval-harmless": {"harmless": {"harmless.json", "answers.jsonl", "answers.settings.json",
                                     "harmless.png"}},
        "eval-drift": {"drift": {"drift.json", "kl_by_position.png"}},
    }
    tree: dict[str, set[str]] = {"": {"report.md", "summary.json", "configs/"},
                                 "configs": {"pipeline.py"}}
    for stage in stages:
      tree["configs"].add(f"{stage.replace('-', '_')}.py")
      for folder, entries in per_stage[stage].items():
        tree[""].add(folder + "/")
        tree.setdefault(folder, set()).update(entries)
    if any(s in TRAINING_STAGES for s in stages):
      tree[""].add("plots/")
      tree["plots"] = {f"{s}.png" for s in TRAINING_STAGES if s in stages}
    return tree
