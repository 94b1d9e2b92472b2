"""Every experiments/*.py, with each of its VARIANTS: a valid, locked config; typos and
unknown variants are errors that say what went wrong and where."""

import importlib.util
import pathlib
import re

import pytest

from cai_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.py"))


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _get_config(module, variant: str):
  # As config_flags calls it: an argument only for `experiments/x.py:variant`.
  return module.get_config(variant) if variant else module.get_config()


CASES = [pytest.param(path, variant, id=f"{path.stem}:{variant}")
         for path in EXPERIMENTS for variant in _load(path).VARIANTS]


def test_experiments_are_found():
  assert {"tiny", "quickstart"} <= {p.stem for p in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_get_config_comes_from_experiment_config(path):
  module = _load(path)
  assert module.get_config.variants == module.VARIANTS


@pytest.mark.parametrize("path, variant", CASES)
def test_variant_is_a_valid_locked_config(path, variant):
  config = _get_config(_load(path), variant)
  config_lib.validate(config)
  assert config.is_locked and config.sft.is_locked and config.sft.optim.is_locked


@pytest.mark.parametrize("path, variant", CASES)
def test_variant_refuses_a_misspelt_field(path, variant):
  config = _get_config(_load(path), variant)
  with pytest.raises(AttributeError, match='Did you mean "num_steps" instead of "num_stpes"'):
    config.sft.num_stpes = 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_unknown_variant_names_the_file_and_the_known_ones(path):
  module = _load(path)
  want = f"experiments/{path.name}: unknown variant 'nope'; expected one of {list(module.VARIANTS)}"
  with pytest.raises(ValueError, match=re.escape(want)):
    module.get_config("nope")


@pytest.mark.parametrize("statement, error, message", [
    ("config.sft.num_stpes = 3", AttributeError,
     "config: sft has no field 'num_stpes'; did you mean 'num_steps'?"),
    ("config.sft.optim.lrr = 1e-3", AttributeError,
     "config: sft.optim has no field 'lrr'; did you mean 'lr'?"),
    ("config.sftt.num_steps = 3", AttributeError,
     "config: config has no field 'sftt'; did you mean 'sft'?"),
    ('config["sft"]["num_stpes"] = 3', KeyError,
     "config: sft has no field 'num_stpes'; did you mean 'num_steps'?"),
])
def test_typo_inside_an_experiment_file_reads_like_the_command_line(tmp_path, statement, error, message):
  path = tmp_path / "experiments" / "typo.py"
  path.parent.mkdir()
  path.write_text("from cai_jax.config import experiment_config\n\n\n"
                  "@experiment_config(('',))\n"
                  "def get_config(config, variant):\n"
                  f"  {statement}\n"
                  "  return config\n")
  with pytest.raises(error) as excinfo:
    _load(path).get_config()
  assert excinfo.value.args == (message,)
  assert any(pathlib.Path(entry.path) == path and entry.lineno + 1 == 6 for entry in excinfo.traceback)


def test_cli_unknown_variant_is_a_plain_exit_message():
  from cai_jax.cli import load_config
  with pytest.raises(SystemExit) as excinfo:
    load_config([f"--config={REPO / 'experiments/tiny.py'}:nope"])
  text = str(excinfo.value.code)
  assert "experiments/tiny.py: unknown variant 'nope'; expected one of ['']" in text
  assert "Traceback" not in text


def test_cli_config_error_exits_2_with_the_message_alone(capsys):
  from cai_jax.cli import main
  with pytest.raises(SystemExit) as excinfo:
    main(["info", f"--config={REPO / 'experiments/tiny.py'}:nope"])
  assert excinfo.value.code == 2
  err = capsys.readouterr().err
  assert "unknown variant 'nope'" in err and "Traceback" not in err
