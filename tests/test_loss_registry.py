"""Losses by name everywhere: every registered loss against a NumPy reference (value and
gradient), a user's loss in their own file trained through the CLI, misspelt names refused.

The gradient reference is a central finite difference of the NumPy value in float64, so
a new loss needs only its value written in NumPy here; the completeness test fails until
it is.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import cli
from cai_jax import config as config_lib
from cai_jax import losses
from cai_jax.train import ppo

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
  """Tiny inputs for one loss, its NumPy reference and the outputs to differentiate."""

  make: Callable[[np.random.Generator], tuple[dict, dict, dict]]  # -> (outputs, batch, cfg)
  reference: Callable[[dict, dict, dict], tuple[float, dict[str, float]]]  # -> (total, metrics)
  wrt: tuple[str, ...]


def _f64(d: dict) -> dict:
  return {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in d.items()}


def _token_mean(x, mask):
  return float(np.sum(np.where(mask, x, 0.0)) / max(mask.sum(), 1))


# ----------------------------------------------------------------------------- sft_ce


def _sft_inputs(rng):
  B, T, D, V = 2, 5, 3, 7
  mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.int32)  # position 0 never counts
  outputs = {"hidden": rng.normal(size=(B, T, D)).astype(np.float32),
             "head": rng.normal(size=(V, D)).astype(np.float32)}
  return outputs, {"tokens": rng.integers(0, V, (B, T)).astype(np.int32), "loss_mask": mask}, {}


def _sft_ce_numpy(outputs, batch, cfg):
  logits = np.einsum("btd,vd->btv", outputs["hidden"], outputs["head"])[:, :-1]  # [B, T-1, V]
  targets, m = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:].astype(np.float64)
  top = logits.max(-1)
  logz = np.log(np.exp(logits - top[..., None]).sum(-1)) + top
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  n = m.sum()
  loss = float(((logz - picked) * m).sum() / n)
  return loss, {"loss": loss, "accuracy": float(((picked >= top) * m).sum() / n), "n_tokens": n}


# ----------------------------------------------------------------------------- bradley_terry


def _bt_inputs(rng):
  outputs = {"reward_a": rng.normal(size=5).astype(np.float32),
             "reward_b": rng.normal(size=5).astype(np.float32)}
  batch = {"p_a": np.array([1.0, 0.0, 0.7, 0.5, 0.2], np.float32),
           "weight": np.array([1, 1, 1, 1, 0], np.float32)}  # the last row is padding
  return outputs, batch, {}


def _bt_numpy(outputs, batch, cfg):
  d = outputs["reward_a"] - outputs["reward_b"]
  p, w = batch["p_a"], batch["weight"]
  log_sig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
  loss = float((-(p * log_sig(d) + (1 - p) * log_sig(-d)) * w).sum() / w.sum())
  side = np.sign(p - 0.5)
  decided = w * np.abs(side)
  return loss, {"loss": loss, "accuracy": float(((side * d > 0) * decided).sum() / decided.sum()),
                "margin": float((side * d * decided).sum() / decided.sum())}


# ----------------------------------------------------------------------------- PPO losses


def _ppo_inputs(rng, cfg):
  B, T = 3, 6
  mask = np.zeros((B, T), bool)
  mask[0, 2:6], mask[1, 1:3], mask[2, 4:6] = True, True, True
  old = rng.normal(-2.0, 0.5, (B, T)).astype(np.float32)
  outputs = {"logprobs": (old + rng.normal(0, 0.3, (B, T))).astype(np.float32),
             "entropy": rng.uniform(0, 3, (B, T)).astype(np.float32),
             "values": rng.normal(size=(B, T)).astype(np.float32)}
  batch = {"mask": mask, "old_logprobs": old,
           "ref_logprobs": (old + rng.normal(0, 0.4, (B, T))).astype(np.float32),
           "advantages": rng.normal(size=(B, T)).astype(np.float32),
           "old_values": rng.normal(size=(B, T)).astype(np.float32),
           "returns": rng.normal(size=(B, T)).astype(np.float32)}
  return outputs, batch, cfg


def _ppo_clip_numpy(outputs, batch, cfg):
  m, eps = batch["mask"], cfg["clip_eps"]
  ratio = np.exp(np.where(m, outputs["logprobs"] - batch["old_logprobs"], 0.0))
  a = batch["advantages"]
  unclipped, clipped = ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a
  pg = -_token_mean(np.minimum(unclipped, clipped), m)
  entropy = _token_mean(outputs["entropy"], m)
  return pg - cfg["entropy_coef"] * entropy, {
      "policy_loss": pg, "entropy": entropy, "clip_frac": _token_mean(clipped < unclipped, m),
      "approx_kl": _token_mean(ratio - 1 - np.log(ratio), m)}


def _value_clip_numpy(outputs, batch, cfg):
  m, eps = batch["mask"], cfg["value_clip_eps"]
  v, old, ret = outputs["values"], batch["old_values"], batch["returns"]
  err = (v - ret) ** 2
  err_clip = (old + np.clip(v - old, -eps, eps) - ret) ** 2 if eps else err
  value_loss = 0.5 * _token_mean(np.maximum(err, err_clip), m)
  return cfg["value_coef"] * value_loss, {"value_loss": value_loss,
                                          "value_clip_frac": _token_mean(err_clip > err, m)}


def _kl_penalty_numpy(outputs, batch, cfg):
  d = batch["ref_logprobs"] - outputs["logprobs"]
  per_token = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.expm1(d) - d}[cfg["kl_estimator"]]
  kl = _token_mean(per_token, batch["mask"])
  return cfg["kl_coef"] * kl, {"kl_loss": kl}


def _ppo_case(reference, wrt, **cfg):
  return Case(lambda rng: _ppo_inputs(rng, cfg), reference, wrt)


# name -> cases. A loss registered by the library without an entry here fails the
# completeness test below.
REFERENCES: dict[str, list[Case]] = {
    "sft_ce": [Case(_sft_inputs, _sft_ce_numpy, ("hidden", "head"))],
    "bradley_terry": [Case(_bt_inputs, _bt_numpy, ("reward_a", "reward_b"))],
    "ppo_clip": [_ppo_case(_ppo_clip_numpy, ("logprobs", "entropy"), clip_eps=0.2,
                           entropy_coef=0.01)],
    "value_clip": [_ppo_case(_value_clip_numpy, ("values",), value_clip_eps=eps, value_coef=0.5)
                   for eps in (0.2, 0.0)],
    "kl_penalty": [_ppo_case(_kl_penalty_numpy, ("logprobs",), kl_estimator=k, kl_coef=0.3)
                   for k in ("k1", "k2", "k3")],
}
CASES = [pytest.param(name, i, id=f"{name}-{i}") for name in REFERENCES
         for i in range(len(REFERENCES[name]))]


def _library_losses() -> set[str]:
  """Registered losses defined inside the package (not by tests or users' files)."""
  return {name for name, fn in losses.registered_losses().items()
          if fn.__module__.startswith("cai_jax.")}


def _references_in(test_file: str) -> set[str]:
  """The losses another test file checks against NumPy in value and gradient (its NUMPY_LOSSES)."""
  spec = importlib.util.spec_from_file_location(f"_references_{pathlib.Path(test_file).stem}",
                                                REPO / test_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return set(module.NUMPY_LOSSES)


def test_every_library_loss_has_a_numpy_reference():
  # The DPO family (losses/preference.py) has its references next to its stage's tests.
  assert set(REFERENCES) | _references_in("tests/test_dpo.py") == _library_losses()


def _finite_difference(fn, inputs: dict, key: str, h: float = 1e-6) -> np.ndarray:
  x = inputs[key]
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (fn({**inputs, key: up}) - fn({**inputs, key: down})) / (2 * h)
  return grad


@pytest.mark.parametrize("name, index", CASES)
def test_loss_value_metrics_and_gradient_match_numpy(name, index):
  case = REFERENCES[name][index]
  outputs, batch, cfg = case.make(np.random.default_rng(index))
  loss_fn = losses.get_loss(name)
  jax_batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def total(diff):
    return loss_fn({**{k: jnp.asarray(v) for k, v in outputs.items()}, **diff}, jax_batch, cfg).total

  diff = {k: jnp.asarray(outputs[k]) for k in case.wrt}
  out = loss_fn({k: jnp.asarray(v) for k, v in outputs.items()}, jax_batch, cfg)
  want_total, want_metrics = case.reference(_f64(outputs), _f64(batch), cfg)
  np.testing.assert_allclose(float(out.total), want_total, rtol=1e-5, atol=1e-7)
  for key, want in want_metrics.items():
    np.testing.assert_allclose(float(out.metrics[key]), want, rtol=1e-5, atol=1e-7, err_msg=key)
  grads = jax.grad(total)(diff)
  f64_outputs, f64_batch = _f64(outputs), _f64(batch)
  for key in case.wrt:
    want = _finite_difference(lambda o: case.reference(o, f64_batch, cfg)[0], f64_outputs, key)
    assert np.abs(want).max() > 0, key  # the gradient check checks something
    np.testing.assert_allclose(np.asarray(grads[key]), want, rtol=1e-4, atol=1e-6, err_msg=key)


# ----------------------------------------------------------------------------- users' loss modules

def _readme_loss_example() -> str:
  """The code block of README.md's "A new loss" bullet (so the documented example is tested)."""
  text = (REPO / "README.md").read_text()
  start = text.index("```python", text.index("**A new loss")) + len("```python")
  return textwrap.dedent(text[start:text.index("```", start)])


# A user's file: the README's z-loss example and a policy loss without PPO's clipping.
USER_LOSSES = _readme_loss_example() + textwrap.dedent('''

    @register_loss("unclipped_pg")
    def unclipped_pg(outputs, batch, cfg):
      """-mean(ratio * advantage) over response tokens: PPO's surrogate without the clip."""
      mask = batch["mask"]
      ratio = jnp.exp(jnp.where(mask, outputs["logprobs"] - batch["old_logprobs"], 0.0))
      loss = -jnp.sum(jnp.where(mask, ratio * batch["advantages"], 0.0)) / jnp.maximum(mask.sum(), 1)
      return LossOutput(total=loss, metrics={"unclipped_pg_loss": loss})
''')


@pytest.fixture
def user_losses(tmp_path):
  path = tmp_path / "my_losses.py"
  path.write_text(USER_LOSSES)
  return path


def test_a_py_file_registers_its_losses_once(user_losses):
  (name,) = losses.import_loss_modules(f" {user_losses} ,")
  assert losses.get_loss("sft_ce_zloss").__module__ == name == sys.modules[name].__name__
  # The config check and the stage both import it: the second import is a no-op.
  assert losses.import_loss_modules(str(user_losses)) == [name]
  assert "sft_ce_zloss" not in _library_losses()


def test_a_module_path_is_imported_by_name(tmp_path, monkeypatch):
  (tmp_path / "lab_losses.py").write_text(textwrap.dedent('''
      import jax.numpy as jnp
      from cai_jax.losses import LossOutput, register_loss

      @register_loss("lab_zero")
      def lab_zero(outputs, batch, cfg):
        return LossOutput(total=jnp.zeros(()), metrics={})
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  assert losses.import_loss_modules("lab_losses") == ["lab_losses"]
  assert losses.get_loss("lab_zero").__module__ == "lab_losses"


@pytest.mark.parametrize("spec, message", [
    ("no/such/file.py", "config.loss_modules: no file at 'no/such/file.py'"),
    ("no_such_package.losses", "config.loss_modules: no module named 'no_such_package.losses'")])
def test_a_missing_loss_module_is_a_value_error_naming_the_field(spec, message):
  with pytest.raises(ValueError, match=message):
    losses.import_loss_modules(spec)


def test_ppo_loss_names_default_to_the_builtin_losses():
  assert ppo.configured_loss_names({"kl_in": "reward"}) == ("ppo_clip", "value_clip")
  assert ppo.configured_loss_names({"kl_in": "loss"}) == ("ppo_clip", "value_clip", "kl_penalty")
  config = config_lib.base_config()
  assert ppo.configured_loss_names(config.ppo) == ("ppo_clip", "value_clip")
  assert ppo.configured_loss_names({"kl_in": "loss", "policy_loss": "a", "value_loss": "b",
                                    "kl_term": "c"}) == ("a", "b", "c")


# ----------------------------------------------------------------------------- the CLI


def _cli(*argv: str, cwd: pathlib.Path) -> dict:
  """Runs `python -m cai_jax ...` and returns the summary (the last stdout line)."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, "-m", "cai_jax", *argv], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _metrics(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _write_sl_cai(path: pathlib.Path) -> None:
  rows = [{"id": f"r{i}", "prompt": f"Question {i}?", "initial": "ok", "kind": "red_team",
           "rounds": [{"principle": "p", "critique": "c", "revision": f"A careful answer {i}."}]}
          for i in range(6)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sft_trains_through_the_cli_with_a_loss_from_a_users_file(tmp_path, user_losses):
  data = tmp_path / "sl.jsonl"
  _write_sl_cai(data)
  summary = _cli("sft", "--config", str(REPO / "experiments/tiny.py"),
                 f"--config.workdir={tmp_path / 'run'}", f"--config.loss_modules={user_losses}",
                 "--config.sft.loss=sft_ce_zloss", f"--config.sft.data={data}",
                 "--config.sft.num_steps=2", "--config.sft.seq_len=64", "--config.sft.log_every=0",
                 "--config.sft.eval_fraction=0", "--config.sft.export_hf=none", cwd=tmp_path)
  assert summary["loss"] == "sft_ce_zloss" and summary["steps"] == 2
  rows = _metrics(tmp_path / "run" / "sft" / "metrics.jsonl")
  # Only the user's loss writes z_loss; log Z of a random tiny model is about log(vocab) > 5.
  assert [r["step"] for r in rows] == [1, 2] and all(r["z_loss"] > 25 for r in rows)


def test_ppo_trains_through_the_cli_with_a_policy_loss_from_a_users_file(tmp_path, user_losses):
  summary = _cli("ppo", "--config", f"{REPO / 'experiments/rl_cai.py'}:tiny",
                 f"--config.workdir={tmp_path / 'run'}", f"--config.loss_modules={user_losses}",
                 "--config.ppo.policy_loss=unclipped_pg", "--config.ppo.num_steps=1",
                 "--config.ppo.epochs=1", "--config.ppo.max_new_tokens=8", cwd=tmp_path)
  assert summary["steps"] == 1
  assert summary["losses"] == {"policy": "unclipped_pg", "value": "value_clip", "kl": None}
  (row,) = _metrics(tmp_path / "run" / "ppo" / "metrics.jsonl")
  assert "unclipped_pg_loss" in row and "value_loss" in row
  assert "clip_frac" not in row  # ppo_clip's metric: the built-in policy loss did not run


@pytest.mark.parametrize("override, message", [
    ("sft.loss=sft_cee", "sft.loss: unknown loss 'sft_cee'; did you mean 'sft_ce'? registered: ["),
    ("ppo.policy_loss=ppo_clipp", "ppo.policy_loss: unknown loss 'ppo_clipp'; did you mean 'ppo_clip'?"),
    ("rm.loss=bradly_terry", "rm.loss: unknown loss 'bradly_terry'; did you mean 'bradley_terry'?"),
    ("ppo.kl_term=kl_penalti", "ppo.kl_term: unknown loss 'kl_penalti'; did you mean 'kl_penalty'?"),
    ("dpo.loss=ipoo", "dpo.loss: unknown loss 'ipoo'; did you mean 'ipo'?"),
    ("loss_modules=missing_losses.py", "config.loss_modules: no file at 'missing_losses.py'")])
def test_a_misspelt_loss_is_a_config_error_with_a_suggestion(capsys, override, message):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["sft", "--config", str(REPO / "experiments/tiny.py"), f"--config.{override}"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err.strip().startswith(f"config error: {message}")


def test_a_users_loss_name_is_known_to_the_config_check_once_its_module_is_named(tmp_path):
  path = tmp_path / "only_here.py"
  path.write_text(USER_LOSSES.replace('"sft_ce_zloss"', '"only_here_ce"').replace(
      '"unclipped_pg"', '"only_here_pg"'))
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"sft.loss": "only_here_ce"})
  with pytest.raises(ValueError, match="sft.loss: unknown loss 'only_here_ce'"):
    config_lib.validate(config)
  config_lib.apply_overrides(config, {"loss_modules": str(path)})
  assert config_lib.validate(config) is config
