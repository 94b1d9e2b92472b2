"""The CLI's contract: bad input is one line and exit code 2; bugs keep their traceback."""

import logging

import pytest

from cai_jax import cli


def _run(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  return e.value.code, capsys.readouterr().err


def test_a_stage_error_about_input_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("CAI_JAX_DEBUG", raising=False)
  code, err = _run(capsys, "sl-data", "--config", "experiments/tiny.py",
                   f"--config.workdir={tmp_path}", f"--config.sl_data.prompts={tmp_path}/none.jsonl")
  assert code == 2
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("error: prompts:") and "none.jsonl" in err


def test_debug_mode_shows_the_traceback(tmp_path, monkeypatch):
  monkeypatch.setenv("CAI_JAX_DEBUG", "1")
  with pytest.raises(ValueError, match="none.jsonl"):
    cli.main(["sl-data", "--config", "experiments/tiny.py", f"--config.workdir={tmp_path}",
              f"--config.sl_data.prompts={tmp_path}/none.jsonl"])


def test_a_bug_is_not_disguised_as_bad_input(monkeypatch, tmp_path):
  from cai_jax import stages

  def broken(name, config):
    raise ZeroDivisionError("a bug")
  monkeypatch.setattr(stages, "run_stage", broken)
  with pytest.raises(ZeroDivisionError):
    cli.main(["info", "--config", "experiments/tiny.py", f"--config.workdir={tmp_path}"])


def test_the_cli_saves_the_config_each_stage_ran_with(tmp_path, capsys):
  cli.main(["info", "--config", "experiments/tiny.py", f"--config.workdir={tmp_path}",
            "--config.seed=7"])
  saved = (tmp_path / "configs" / "info.py").read_text()
  assert "'seed': 7" in saved and "def get_config" in saved


def test_single_process_runs_do_not_start_jax_distributed(monkeypatch):
  from cai_jax import config as config_lib
  from cai_jax import sharding

  calls = []
  monkeypatch.setattr(sharding.jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  cli.start_distributed(config_lib.base_config())
  assert calls == []
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"distributed.num_processes": 2,
                                      "distributed.coordinator_address": "localhost:1234",
                                      "distributed.process_id": 1})
  monkeypatch.setattr(sharding.jax, "process_index", lambda: 1)
  root = logging.getLogger()
  monkeypatch.setattr(root, "level", root.level)  # restored after the test
  cli.start_distributed(config)
  assert calls == [dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)]
  assert root.level == logging.WARNING  # process 1 of 2 keeps quiet; process 0 logs
