"""The layer rules of pyproject.toml's [tool.importlinter] contracts hold (import-linter)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _lint_imports(*args: str) -> subprocess.CompletedProcess:
  exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).parent / "lint-imports")
  if not pathlib.Path(exe).exists():
    pytest.fail("lint-imports is not installed: pip install -e '.[test]' brings import-linter")
  return subprocess.run([exe, "--no-cache", *args], cwd=REPO, capture_output=True, text=True)


def test_every_layer_contract_is_kept():
  done = _lint_imports()
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert "0 broken" in done.stdout and "5 kept" in done.stdout


def test_a_broken_rule_is_reported(tmp_path):
  """The checker sees real imports: the stages do import train, so forbidding it must fail."""
  config = tmp_path / "contracts.toml"
  config.write_text('[tool.importlinter]\nroot_package = "cai_jax"\n\n'
                    '[[tool.importlinter.contracts]]\nname = "stages without train"\n'
                    'type = "forbidden"\nsource_modules = ["cai_jax.stages"]\n'
                    'forbidden_modules = ["cai_jax.train"]\n')
  done = _lint_imports("--config", str(config))
  assert done.returncode != 0 and "BROKEN" in done.stdout.upper()
  assert "cai_jax.stages.sft -> cai_jax.train" in done.stdout
