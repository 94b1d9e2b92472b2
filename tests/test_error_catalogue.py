"""The error catalogue: bad inputs and faults, each run through the CLI in-process.

Every case is a command a user could type (`cli.main([...])` on the tiny model) after an
optional setup that plants a bad file, a damaged checkpoint, a held lock, ... Each must
end with exit code 2 and a one-paragraph message on stderr that names the thing at fault
(file, line, field or setting) -- never a traceback -- and must leave nothing behind that
looks like a finished output. Most cases fail before a model loads, so the catalogue runs
in well under a minute and a half. The last test prints the count.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import sys
import types
from collections.abc import Callable

import pytest

from cai_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = "experiments/tiny.py"
FINISHED = ("summary.json", "safety.json", "harmless.json", "hhh.json", "answers.jsonl",
            "frontier.png", "harmless.png", "model.safetensors", "reward_model.safetensors")


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: the command (with {tmp} for the case's folder), the expected exit code
  and message fragments, a setup that plants files under {tmp}, and an xfail reason while a
  known gap is open."""

  name: str
  argv: tuple[str, ...]
  fragments: tuple[str, ...]
  setup: Callable[[pathlib.Path], None] | None = None
  code: int = 2
  xfail: str = ""


CASES: list[Case] = []


def case(name: str, stage: str, args: list[str], *fragments: str, config: str | None = TINY,
         setup=None, workdir: bool = True, code: int = 2, xfail: str = "") -> None:
  argv = [stage] + (["--config", config] if config else [])
  argv += ["--config.workdir={tmp}/run"] if workdir and config else []
  CASES.append(Case(name, tuple(argv + args), fragments, setup, code, xfail))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
  """(exit code, stderr) of `python -m cai_jax <argv>`, in-process."""
  try:
    cli.main(argv)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    if isinstance(e.code, str):  # what the interpreter does with SystemExit("message")
      print(e.code, file=sys.stderr)
  return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- file makers


def write(path: pathlib.Path, text: str | bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
  return path


def lines(*records) -> str:
  return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def truncated_gz(path: pathlib.Path, records: list[dict]) -> None:
  """A .jsonl.gz cut in half, as an interrupted download leaves it."""
  data = gzip.compress(lines(*records).encode())
  write(path, data[:len(data) // 2])


SAFE = {"id": "s1", "prompt": "How do I kill a Python process?", "label": "safe"}
PAIR = {"id": "p1", "prompt": "Say hi.", "response_a": "Hi!", "response_b": "No.", "p_a": 0.9}
HH = {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: No."}
MC = {"prompt": "2 + 2 =", "corrects": [" 4"], "incorrects": [" 5"]}


def planted(rel: str, text: str | bytes):
  return lambda tmp: write(tmp / rel, text)


def evaluator_dir(tmp: pathlib.Path) -> None:
  (tmp / "evaluator").mkdir(parents=True)  # enough for eval-harmless to reach its prompts


def with_evaluator(rel: str, text: str | bytes):
  return lambda tmp: (evaluator_dir(tmp), write(tmp / rel, text))


# ----------------------------------------------------------------------------- command line

case("unknown variant", "sft", [], "unknown variant 'quik'", config="experiments/sft.py:quik")
case("variant of a file without variants", "info", [], "unknown variant 'big'",
     config="experiments/tiny.py:big")
case("typo'd override with a :variant config", "sft", ["--config.sft.num_stpes=3"],
     "did you mean 'num_steps'", config="experiments/quickstart.py:tiny")
case("typo'd override", "eval-safety", ["--config.safety.limt=3"], "did you mean 'limit'")
case("unknown section", "eval-safety", ["--config.rlhf.lr=0.1"], "rlhf")
case("typo inside an experiment file", "info", [], "num_stpes", "did you mean 'num_steps'",
     config="{tmp}/typo.py", setup=planted("typo.py", (
         "from cai_jax.config import experiment_config, use_tiny_model\n\n"
         "@experiment_config(('',))\ndef get_config(config, variant):\n"
         "  use_tiny_model(config)\n  config.sft.num_stpes = 3\n  return config\n")))
case("override value of the wrong type", "eval-safety", ["--config.safety.limit=abc"],
     "safety.limit")
case("overrides without --config", "sft", ["--config.sft.num_steps=3"], "--config experiments/<name>.py is required",
     config=None)
case("no --config at all", "sft", [], "--config experiments/<name>.py is required", config=None)
case("unknown stage", "rlhf", [], "unknown stage 'rlhf'")
case("missing experiment file", "info", [], "experiments/nope.py", config="experiments/nope.py")

# ----------------------------------------------------------------------------- bad values, per section

for field, value, fragment in [
    ("eval.batch_size", "0", "eval.batch_size: must be >= 1, got 0"),
    ("eval.limit", "-3", "eval.limit"),
    ("eval.max_prompt_len", "0", "eval.max_prompt_len"),
    ("feedback.n_prompts", "-7", "feedback.n_prompts: expected -1 (all) or a positive count, got -7"),
    ("feedback.k_principles", "0", "feedback.k_principles"),
    ("feedback.clamp_lo", "0.7", "feedback.clamp_lo"),
    ("feedback.n_few_shot", "-1", "feedback.n_few_shot"),
    ("sampler.temperature", "-1", "sampler.temperature"),
    ("sampler.top_p", "0", "sampler.top_p"),
    ("sampler.top_k", "-2", "sampler.top_k"),
    ("sampler.batch_size", "0", "sampler.batch_size"),
    ("mesh.data", "0", "mesh.data"),
    ("model.preset", "huge", "model.preset: unknown preset 'huge'"),
    ("model.chat_template", "jinja", "model.chat_template"),
    ("model.dtype", "float7", "model.dtype"),
    ("distributed.num_processes", "2", "distributed.coordinator_address"),
    ("sft.num_steps", "0", "sft.num_steps"),
    ("sft.rounds", "first", "sft.rounds"),
    ("sft.on_error", "ignore", "sft.on_error"),
    ("sft.checkpoint_every", "-1", "sft.checkpoint_every"),
    ("sft.optim.lr", "0", "sft.optim.lr"),
    ("sft.optim.name", "adam", "sft.optim.name"),
    ("rm.eval_fraction", "1.5", "rm.eval_fraction"),
    ("rm.human_fraction", "0.5", "rm.human_data is empty"),
    ("rm.keep", "0", "rm.keep"),
    ("rm.n_human", "0", "rm.n_human"),
    ("ppo.minibatch_size", "3", "ppo.minibatch_size"),
    ("ppo.reward", "magic", "ppo.reward"),
    ("ppo.value_coef", "-1", "ppo.value_coef"),
    ("dpo.label_noise", "0.7", "dpo.label_noise"),
    ("dpo.loss", "dpoo", "dpo.loss"),
    ("harmless.n_prompts", "0", "harmless.n_prompts"),
    ("safety.limit", "0", "safety.limit"),
    ("safety.models", "a,,b", "safety.models"),
    ("refusal.backend", "gpt", "refusal.backend"),
    ("drift.k", "0", "drift.k"),
    ("sl_data.mode", "rewrite", "sl_data.mode"),
    ("constitution.on_conflict", "ignore", "constitution.on_conflict"),
]:
  case(f"{field}={value}", "info", [f"--config.{field}={value}"], fragment)

# ----------------------------------------------------------------------------- data files

case("safety data: missing file", "eval-safety", ["--config.safety.data={tmp}/none.jsonl"],
     "none.jsonl: no such file")
case("safety data: empty file", "eval-safety", ["--config.safety.data={tmp}/s.jsonl"],
     "s.jsonl: no prompts", setup=planted("s.jsonl", ""))
case("safety data: malformed JSON on line 2", "eval-safety", ["--config.safety.data={tmp}/s.jsonl"],
     "s.jsonl:2: not valid JSON", setup=planted("s.jsonl", lines(SAFE, '{"id": "s2", "prompt": ')))
case("safety data: wrong field type", "eval-safety", ["--config.safety.data={tmp}/s.jsonl"],
     "s.jsonl:1:label", setup=planted("s.jsonl", lines(dict(SAFE, label=5))))
case("safety data: truncated .jsonl.gz", "eval-safety",
     ["--config.safety.data={tmp}/s.jsonl.gz"], "s.jsonl.gz: truncated gzip file",
     setup=lambda tmp: truncated_gz(tmp / "s.jsonl.gz",
                                    [dict(SAFE, id=f"s{i}", prompt=f"question {i} " * 20)
                                     for i in range(200)]))
case("safety data: a folder", "eval-safety", ["--config.safety.data={tmp}"], "is a folder")
case("safety data: not UTF-8", "eval-safety", ["--config.safety.data={tmp}/s.jsonl"],
     "s.jsonl: not UTF-8", setup=planted("s.jsonl", b'{"prompt": "caf\xe9", "label": "safe"}\n'))
case("safety data: a JSON list, not an object", "eval-safety",
     ["--config.safety.data={tmp}/s.jsonl"], "s.jsonl:1: expected a JSON object",
     setup=planted("s.jsonl", lines([1, 2])))

HARMLESS = ["--config.harmless.model={tmp}/evaluator"]
case("prompts: empty file", "eval-harmless", HARMLESS + ["--config.harmless.prompts={tmp}/p.jsonl"],
     "p.jsonl: no prompts", setup=with_evaluator("p.jsonl", "\n"))
case("prompts: missing file", "eval-harmless", HARMLESS + ["--config.harmless.prompts={tmp}/q.jsonl"],
     "q.jsonl' is neither a built-in set", setup=evaluator_dir)
case("prompts: no prompt field", "eval-harmless",
     HARMLESS + ["--config.harmless.prompts={tmp}/p.jsonl"], "p.jsonl:1: expected a field 'prompt'",
     setup=with_evaluator("p.jsonl", lines({"text": "hi"})))
case("prompts: a number as the prompt", "eval-harmless",
     HARMLESS + ["--config.harmless.prompts={tmp}/p.jsonl"], "p.jsonl:2:prompt: expected a string",
     setup=with_evaluator("p.jsonl", lines({"prompt": "hi"}, {"prompt": 7})))
case("prompts: truncated .jsonl.gz", "eval-harmless",
     HARMLESS + ["--config.harmless.prompts={tmp}/p.jsonl.gz"], "p.jsonl.gz: truncated gzip file",
     setup=lambda tmp: (evaluator_dir(tmp), truncated_gz(
         tmp / "p.jsonl.gz", [{"prompt": f"question {i} " * 30} for i in range(300)])))
case("prompts: duplicate ids", "eval-harmless",
     HARMLESS + ["--config.harmless.prompts={tmp}/p.jsonl"], "prompt id 'a' appears more than once",
     setup=with_evaluator("p.jsonl", lines({"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"})))
case("eval-harmless without an evaluator", "eval-harmless", [], "run stage harmless-rm first")

case("preferences: missing file", "rm", ["--config.rm.ai_data={tmp}/f.jsonl"], "f.jsonl: no such file")
case("preferences: the default feedback file is absent", "rm", [], "feedback.jsonl: no such file")
case("preferences: p_a out of range", "rm", ["--config.rm.ai_data={tmp}/f.jsonl"],
     "f.jsonl:1:p_a: expected a number in [0, 1]", setup=planted("f.jsonl", lines(dict(PAIR, p_a=2))))
case("preferences: missing response", "rm", ["--config.rm.ai_data={tmp}/f.jsonl"],
     "f.jsonl:1:response_b", setup=planted("f.jsonl", lines({k: v for k, v in PAIR.items()
                                                            if k != "response_b"})))
case("preferences: empty file", "rm", ["--config.rm.ai_data={tmp}/f.jsonl"], "no preference pairs",
     setup=planted("f.jsonl", ""))
case("hh-rlhf pairs: not a transcript", "rm",
     ["--config.rm.ai_data=none", "--config.rm.human_data={tmp}/hh.jsonl"], "hh.jsonl:1:chosen",
     setup=planted("hh.jsonl", lines(dict(HH, chosen="just text"))))
case("harmless pairs: missing file", "harmless-rm", ["--config.harmless.data={tmp}/hh.jsonl.gz"],
     "harmless.data: no file at")
case("harmless pairs: truncated .jsonl.gz", "harmless-rm",
     ["--config.harmless.data={tmp}/hh.jsonl.gz"], "hh.jsonl.gz: truncated gzip file",
     setup=lambda tmp: truncated_gz(tmp / "hh.jsonl.gz", [
         {k: v + " filler" * 40 for k, v in HH.items()} for _ in range(300)]))
case("multiple choice: incorrects not a list", "eval-mc", ["--data={tmp}/mc.jsonl"],
     "mc.jsonl:1:incorrects", setup=planted("mc.jsonl", lines(dict(MC, incorrects=" 5"))))
case("multiple choice: empty file", "eval-mc", ["--data={tmp}/mc.jsonl"], "mc.jsonl: no items",
     setup=planted("mc.jsonl", ""))

EMPTY = planted("empty.jsonl", "")
case("sl-data: empty prompts file (wrote 0 records, exit 0)", "sl-data",
     ["--config.sl_data.prompts={tmp}/empty.jsonl"], "empty.jsonl: no prompts", setup=EMPTY)
case("feedback: empty prompts file", "feedback", ["--config.feedback.prompts={tmp}/empty.jsonl"],
     "empty.jsonl: no prompts", setup=EMPTY)
case("feedback: few-shot file missing", "feedback", ["--config.feedback.few_shot={tmp}/none.json"],
     "none.json")
case("sft: SL-CAI record without rounds", "sft", ["--config.sft.data={tmp}/sl.jsonl"],
     "sl.jsonl:1", "rounds", setup=planted("sl.jsonl", lines(
         {"id": "a", "prompt": "x", "initial": "y", "rounds": [], "kind": "red_team"})))
case("sft: no SL-CAI records in the workdir", "sft", [], "sl_cai.jsonl: no such file")
case("HHH comparisons: missing prompt", "eval-hhh", ["--config.eval.hhh={tmp}/hhh.jsonl"],
     "hhh.jsonl:1:prompt", setup=planted("hhh.jsonl", lines({"input": "x"})))
case("refusal labels: unknown class", "eval-refusal", ["--config.refusal.data={tmp}/r.jsonl"],
     "r.jsonl:1:label", setup=planted("r.jsonl", lines(
         {"prompt": "x", "completion": "y", "label": "maybe"})))

# ----------------------------------------------------------------------------- weights and tokenizer


def _export(tmp: pathlib.Path, name: str = "hf", **shape) -> pathlib.Path:
  """A tiny random model exported as HF safetensors (byte tokenizer) at {tmp}/<name>."""
  from flax import nnx

  from cai_jax import weights
  from cai_jax.models import Transformer, get_model_config
  from cai_jax.tokenizer import ByteTokenizer
  write(tmp / "mc.jsonl", lines(MC))
  cfg = get_model_config("tiny", **shape)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  return weights.export_hf(tmp / name, cfg, nnx.to_pure_dict(nnx.state(model)), ByteTokenizer())


def _truncated_weights(tmp: pathlib.Path) -> None:
  f = _export(tmp) / "model.safetensors"
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _int_weights(tmp: pathlib.Path) -> None:
  import safetensors.numpy
  f = _export(tmp) / "model.safetensors"
  tensors = safetensors.numpy.load_file(str(f))
  tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].astype("int32")
  safetensors.numpy.save_file(tensors, str(f))


def _extra_layer(tmp: pathlib.Path) -> None:
  f = _export(tmp) / "config.json"
  config = json.loads(f.read_text())
  write(f, json.dumps(dict(config, num_hidden_layers=config["num_hidden_layers"] + 1)))


WEIGHTS = ["--data={tmp}/mc.jsonl", "--config.model.source={tmp}/hf"]
case("weights: truncated safetensors", "eval-mc", WEIGHTS, "model.safetensors", "truncated",
     setup=_truncated_weights)
case("weights: wrong dtype", "eval-mc", WEIGHTS, "model.embed_tokens.weight", "I32",
     setup=_int_weights)
case("weights: config.json names more layers than the file holds", "eval-mc", WEIGHTS,
     "missing tensor 'model.layers.2", setup=_extra_layer)
case("weights: another architecture than the preset", "eval-mc",
     WEIGHTS + ["--config.model.preset=smollm2_135m"], "model.preset: 'smollm2_135m' does not match",
     setup=_export)
case("tokenizer larger than the model's vocabulary", "eval-mc", WEIGHTS + ["--config.model.preset="],
     "model.tokenizer: the tokenizer has 264 tokens", "holds only 128",
     setup=lambda tmp: _export(tmp, vocab_size=128))

# ----------------------------------------------------------------------------- constitutions and profiles

case("constitution: bad TOML", "constitution", ["--config.constitution.path={tmp}/c.toml"], "c.toml",
     setup=planted("c.toml", "[[principles]\nid = 'x'\n"))
case("constitution: missing file", "constitution", ["--config.constitution.path={tmp}/none.toml"],
     "none.toml")
case("profile: unknown name", "constitution", ["--config.constitution.profiles=narnia"], "narnia")
case("sl-data: profile unknown", "sl-data", ["--config.sl_data.profile=narnia"], "profile 'narnia'")

# ----------------------------------------------------------------------------- model, mesh, workdir

case("model: weights path that does not exist", "eval-mc",
     ["--data={tmp}/mc.jsonl", "--config.model.source={tmp}/weights"], "model.source",
     setup=planted("mc.jsonl", lines(MC)))
case("mesh that does not divide the devices", "rm", ["--config.mesh.data=3"], "mesh")
case("rm batch not divisible by the data axis", "rm", ["--config.rm.batch_size=12"],
     "rm.batch_size: 12 rows", "mesh.data 8")
case("harmless-rm batch not divisible by data x fsdp", "harmless-rm",
     ["--config.harmless.batch_size=2", "--config.mesh.data=2", "--config.mesh.fsdp=4"],
     "harmless.batch_size: 2 rows", "mesh.fsdp 4")
case("workdir is a file", "eval-safety", ["--config.workdir={tmp}/file"], "workdir:", "is a file",
     setup=planted("file", "x"), workdir=False)
case("workdir inside a file", "rm", ["--config.workdir={tmp}/file/run"], "which is a file",
     setup=planted("file", "x"), workdir=False)


def _unwritable(tmp: pathlib.Path) -> None:
  folder = tmp / "locked"
  folder.mkdir()
  folder.chmod(0o500)


UNWRITABLE = "/proc/sys/cai_jax_run" if os.geteuid() == 0 else "{tmp}/locked/run"
case("workdir not writable", "eval-safety", [f"--config.workdir={UNWRITABLE}"], "not writable",
     setup=_unwritable, workdir=False)

# ----------------------------------------------------------------------------- resume conflicts


def _rm_config(tmp: pathlib.Path, **overrides):
  from cai_jax import config as config_lib
  from cai_jax.cli import _load_experiment
  config = _load_experiment(str(REPO / TINY))
  return config_lib.apply_overrides(config, {"workdir": str(tmp / "run"),
                                             "rm.ai_data": str(tmp / "f.jsonl"), **overrides})


def _rm_checkpoints(tmp: pathlib.Path, record: bool = True, **overrides) -> None:
  """A workdir whose rm stage saved a checkpoint (a placeholder step folder) with the settings
  of `overrides`; record=False leaves out the settings record."""
  from cai_jax.data import fingerprint
  from cai_jax.data import preferences as prefs
  from cai_jax.stages import common
  from cai_jax.train import reward
  write(tmp / "f.jsonl", lines(PAIR, dict(PAIR, id="p2", p_a=0.2)))
  config = _rm_config(tmp, **overrides)
  c = config.rm
  settings = reward.RMSettings(optim=c.optim.to_dict(), loss=c.loss, max_len=c.max_len,
                               batch_size=c.batch_size, num_steps=c.num_steps,
                               human_fraction=c.human_fraction, eval_fraction=c.eval_fraction,
                               seed=c.seed)
  pairs = prefs.load_preference_jsonl(tmp / "f.jsonl")
  described = common.training_settings(config, settings, {"ai": (str(tmp / "f.jsonl"), pairs),
                                                           "human": ("", [])})
  checkpoints = common.layout(config).checkpoints("rm")
  (checkpoints / "4").mkdir(parents=True)
  if record:
    fingerprint.check_or_write(checkpoints / common.SETTINGS_FILE, described, "rm checkpoints")
  return checkpoints


def _rm_corrupt_checkpoints(tmp: pathlib.Path) -> None:
  """Checkpoints made with this run's settings, every one of them garbled."""
  checkpoints = _rm_checkpoints(tmp)
  for step in (4, 8):
    write(checkpoints / str(step) / "state" / "checkpoint", b"\0garbage" * 4)
    write(checkpoints / str(step) / "extra" / "data.json", b"\0garbage")


def _rm_with_other_data(tmp: pathlib.Path) -> None:
  _rm_checkpoints(tmp)
  write(tmp / "f.jsonl", lines(PAIR, dict(PAIR, id="p2", p_a=0.3)))  # one label changed


def _held_lock(stage_dir: str):
  """Setup that holds the stage folder's lock for the rest of the test (a live second run)."""
  from cai_jax.data import fingerprint

  def setup(tmp: pathlib.Path):
    lock = fingerprint.stage_lock(tmp / "run" / stage_dir)
    lock.__enter__()
    HELD.append(lock)
  return setup


HELD: list = []

RM = ["--config.rm.ai_data={tmp}/f.jsonl"]
case("rm rerun with another learning rate", "rm", RM + ["--config.rm.optim.lr=0.001"],
     "training.optim.lr: 1e-05 -> 0.001", "settings.json", "new workdir",
     setup=_rm_checkpoints)
case("rm rerun with changed data", "rm", RM, "data.ai.hash", "settings.json", setup=_rm_with_other_data)
COSINE = {"rm.optim.schedule": "cosine"}  # num_steps shapes the decay (a constant rate may extend)
case("rm rerun with more steps under a decaying rate", "rm",
     RM + ["--config.rm.optim.schedule=cosine", "--config.rm.num_steps=400"],
     "training.num_steps: 200 -> 400", setup=lambda tmp: _rm_checkpoints(tmp, **COSINE))
case("rm: every checkpoint corrupt", "rm", RM, "none of the 2 checkpoints", "rm/checkpoints",
     setup=_rm_corrupt_checkpoints)
case("rm checkpoints without a settings record", "rm", RM, "without a record of the settings",
     setup=lambda tmp: _rm_checkpoints(tmp, record=False))
case("rm: a second run on the same workdir", "rm", RM, "another run is writing here",
     setup=lambda tmp: (write(tmp / "f.jsonl", lines(PAIR)), _held_lock("rm")(tmp)))
case("eval-safety: a second run on the same workdir", "eval-safety", [],
     "another run is writing here", setup=_held_lock("safety"))
case("eval-safety: a killed run's answers with other settings", "eval-safety",
     ["--config.sampler.temperature=0.5"], "sampler.temperature: 1.0 -> 0.5", "partial",
     setup=lambda tmp: _partial_answers(tmp))


SMALL_SAFETY = ["--config.safety.limit=2", "--config.safety.max_new_tokens=2"]


def _finished_safety_run(tmp: pathlib.Path) -> None:
  """A finished eval-safety run with the default sampler settings."""
  argv = ["eval-safety", "--config", TINY, f"--config.workdir={tmp}/run"] + SMALL_SAFETY
  assert run_cli(argv, _NoCapture()) == (0, "")


class _NoCapture:
  def readouterr(self):
    return types.SimpleNamespace(err="")


case("eval-safety rerun of a finished run with another temperature", "eval-safety",
     SMALL_SAFETY + ["--config.sampler.temperature=0.5"], "sampler.temperature: 1.0 -> 0.5",
     "safety.json", setup=_finished_safety_run)
case("dpo: empty preference file", "dpo", ["--config.dpo.data={tmp}/empty.jsonl"], "empty.jsonl",
     setup=EMPTY)


def _partial_answers(tmp: pathlib.Path) -> None:
  """The partial answer file a killed eval-safety run (default settings) leaves."""
  from cai_jax.cli import _load_experiment
  from cai_jax.data.jsonl import ResumableRecords
  from cai_jax.stages import common
  config = _load_experiment(str(REPO / TINY))
  settings = common.answer_settings(config, common.model_spec(config), common.sampler_settings(
      config, max_new_tokens=config.safety.max_new_tokens))
  log = ResumableRecords(tmp / "run" / "safety" / ".answers_0_random_tiny.partial.jsonl",
                         settings, "answers")
  log.add([{"id": "x", "prompt": "p", "answer": "a"}])


# ----------------------------------------------------------------------------- the test


def _finished_outputs(root: pathlib.Path) -> set[str]:
  return {str(p) for name in FINISHED for p in root.rglob(name)} if root.is_dir() else set()


@pytest.mark.parametrize("c", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(
    reason=c.xfail, strict=True)] if c.xfail else []) for c in CASES])
def test_bad_input_gives_a_clear_error(c: Case, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  if c.setup is not None:
    c.setup(tmp_path)
  before = _finished_outputs(tmp_path)
  capsys.readouterr()
  try:
    code, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in c.argv], capsys)
  finally:
    while HELD:
      HELD.pop().__exit__(None, None, None)
  assert code == c.code, err
  for fragment in c.fragments:
    assert fragment.replace("{tmp}", str(tmp_path)) in err, err
  assert "Traceback" not in err
  assert len(err.strip().splitlines()) <= 4, err  # one paragraph, not a dump
  assert _finished_outputs(tmp_path) == before


def test_the_catalogue_has_at_least_60_cases():
  print(f"\nerror catalogue: {len(CASES)} cases ({sum(bool(c.xfail) for c in CASES)} known gaps "
        "marked xfail)")
  assert len(CASES) >= 60
