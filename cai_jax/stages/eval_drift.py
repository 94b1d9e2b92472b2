"""Stage `eval-drift`: first-token drift (evals/drift.py) of a model from its reference on
harmful prompts: KL(current || reference) at each of the first k response positions of the
reference's greedy answers, and the log-probability of a refusal opening under both.

  python -m cai_jax eval-drift --config experiments/tiny.py \
      [--config.drift.model=PATH] [--config.drift.reference=PATH]

drift.reference: "" = config.model.source. drift.model: "" = <workdir>/sft/hf when it
exists, else config.model.source. Writes <workdir>/drift/drift.json and kl_by_position.png.
"""

from __future__ import annotations

import dataclasses

from cai_jax.data.prompts import load_prompts
from cai_jax.evals import drift
from cai_jax.sampling import TextSampler
from cai_jax.stages import common


def _check_same_architecture(current, reference) -> None:
  """The KL runs both weight sets through one graphdef, so their shapes must agree."""
  if current.cfg != reference.cfg:
    a, b = dataclasses.asdict(current.cfg), dataclasses.asdict(reference.cfg)
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    raise ValueError(f"eval-drift: {current.source} and reference {reference.source} differ in "
                     f"architecture (field: (current, reference)): {diff}")


def run(config) -> dict:
  d, layout = config.drift, common.layout(config)
  mesh = common.eval_mesh(config)
  ref_source = d.reference or config.model.source
  reference = common.load(config, mesh, rules="sample", source=ref_source)
  common.say_start_model("eval-drift (reference)", reference.source,
                         "drift.reference" if d.reference else "config.model, as drift.reference is unset")
  source, why = layout.start_model(d.model, config.model.source)
  current = common.load(config, mesh, rules="sample", source=source)
  common.say_start_model("eval-drift", current.source, why)
  _check_same_architecture(current, reference)

  prompts = load_prompts(common.repo_path(d.prompts), common.limit(d.n_prompts))
  sampler = TextSampler(reference, common.sampler_settings(config, temperature=0.0,
                                                           max_new_tokens=d.k),
                        mesh=mesh, seed=config.seed)
  probe = drift.reference_answers(sampler, [p.text for p in prompts], d.k, d.refusal_opening)
  stats = drift.first_token_kl(current.graphdef, current.params, reference.params, probe,
                               mesh=mesh)

  out = layout.stage_dir("eval-drift")
  out.mkdir(parents=True, exist_ok=True)
  drift.plot_kl_by_position({current.source: stats["kl_by_position"]}, out / "kl_by_position.png",
                            f"KL({current.source} || {reference.source}), {probe.n} prompts")
  summary = dict(model=current.source, reference=reference.source, n_prompts=probe.n, k=d.k,
                 kl_by_position=[float(x) for x in stats["kl_by_position"]],
                 kl_mean=stats["kl_mean"], refusal_logprob=stats["refusal_logprob"],
                 refusal_logprob_ref=stats["refusal_logprob_ref"])
  return common.finish("eval-drift", summary, out / "drift.json")
