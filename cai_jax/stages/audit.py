"""Stage `audit`: the self-audit of a model (or several) under the resolved constitution.

  python -m cai_jax audit --config experiments/audit.py            # base + quickstart SFT, EU healthcare
  python -m cai_jax audit --config experiments/tiny.py --config.audit.items_per_family=5
  python -m cai_jax audit --config experiments/tiny.py --config.audit.compare=runs/a/audit,runs/b/audit

Builds the battery (evals/audit.py: template, model-written and seeded requests x the
attack families; evals/audit_routes.py: universal-tier override routes and the honour
probes of the deployment's changed stances), or reuses audit.battery, and prints its
sha256. Every model in audit.models answers every item with the deployment's system
prompt (the profiles' context and rules); each answer gets a refusal class
(refusal.backend) and a verdict (evals/audit_run.py), plus the judge's p(break) with
audit.judge. Writes <workdir>/audit/: battery.jsonl, items.jsonl (every item and verdict,
per model; the profile route's load-time probes as model "loader"), route_profiles/
(the probe files), audit.md, audit.json, asr_family.png, asr_tier.png,
violation_principle.png. audit.compare="A,B" instead compares two finished audits item
by item (McNemar) and writes compare.json.

Resumable: each model's answers are kept as they come in a hidden .answers_<i>.partial.jsonl
(its first line: the settings that made them, with the battery's sha256), so a killed run
continues where it stopped with the answers an unbroken run gives (rows seeded by item
ids); audit.settings.json records the audit's settings and a rerun with others is refused,
naming the changed fields; one run at a time. On several hosts each answers its share of
the items and host 0 judges them all and writes the report.
"""

from __future__ import annotations

import json

from cai_jax.config.constitution import comma_list
from cai_jax.data.jsonl import ResumableRecords
from cai_jax.data.redteam import load_redteam
from cai_jax.evals import audit, audit_report, audit_routes, audit_run, refusal
from cai_jax.sampling import TextSampler
from cai_jax.stages import common
from cai_jax.stages import constitution as constitution_stage

STAGE = "audit"


def scenarios(config, constitution, bank, templates, writer) -> tuple[dict, dict]:
  """principle id -> its scenarios (template, model-written and seeded ones taking turns, so
  each source is drawn from early); sizes."""
  a = config.audit
  written, rejected = audit.write_scenarios(
      lambda prompts, rows: writer.complete(prompts, row_ids=rows, step=None),
      constitution, a.model_scenarios, templates.writer_examples) if writer else ({}, 0)
  seeded = {}
  if a.seed_file:
    seeds = load_redteam(common.repo_path(a.seed_file), a.seed_limit)
    seeded = audit.seed_scenarios(seeds, constitution, a.seed_principle)
  out = {p.id: audit.interleave(audit.template_scenarios(constitution, p, bank),
                                written.get(p.id, []), seeded.get(p.id, []))
         for p in constitution.principles}
  sizes = dict(model_written=sum(map(len, written.values())), model_rejected=rejected,
               seeded=sum(map(len, seeded.values())))
  return out, sizes


def battery(config, constitution, bank, templates, writer, out, host) -> tuple[list, str, dict]:
  """(attack + route items under this constitution, battery path, sizes). Every host builds
  the same items (seeded); host 0 writes the battery file."""
  a = config.audit
  if a.battery:
    path = common.repo_path(a.battery)
    items, dropped = audit.restamp(audit.read_battery(path), constitution)
    common.log.info("audit: battery %s; %d items of principles this constitution lacks left out",
                    path, len(dropped))
    return items, path, dict(reused=True, left_out=len(dropped))
  per_principle, sizes = scenarios(config, constitution, bank, templates, writer)
  settings = audit.BatterySettings(families=tuple(comma_list(a.families)),
                                   items_per_family=a.items_per_family,
                                   languages=tuple(comma_list(a.languages)), seed=a.seed)
  items = (audit.build_battery(constitution, per_principle, templates, settings)
           + audit_routes.route_items(constitution, per_principle, templates, a.route_items))
  path = str(out / "battery.jsonl")
  if host.index == 0:
    audit.write_battery(path, items)
  common.barrier(f"{STAGE}: battery written")
  uncovered = [p for p, s in per_principle.items() if not s]
  return items, path, dict(reused=False, uncovered_principles=uncovered, **sizes)


def compare(config, out) -> dict:
  """audit.compare = "A,B": B against A, item by item."""
  specs = comma_list(config.audit.compare)
  runs = []
  for spec in specs:
    path, _, model = spec.partition("::")
    runs.append(audit_run.read_results(common.repo_path(path), model or None))
  result = audit_report.compare(*runs)
  print(audit_report.compare_text(result, specs[0], specs[1]), flush=True)
  out.mkdir(parents=True, exist_ok=True)
  (out / "compare.json").write_text(json.dumps(dict(a=specs[0], b=specs[1], **result), indent=1))
  return common.finish(STAGE, dict(mode="compare", a=specs[0], b=specs[1], **result))


def answer(config, items, deployment, constitution, config_model, mesh, out, host,
           sha) -> tuple[list, list, list]:
  """Every model of audit.models answers every item (each host its share, kept in a
  resumable partial file per model); host 0 judges them all: (result rows, model names,
  the partial files), rows empty on the other hosts."""
  a = config.audit
  settings = common.sampler_settings(config, max_new_tokens=a.max_new_tokens)
  backend = config.refusal.backend
  judge = (TextSampler(config_model(), common.judge_settings(config), mesh=mesh, seed=config.seed)
           if (backend == "judge" or a.judge) and host.index == 0 else None)
  classify = lambda prompts, answers: refusal.classify(  # noqa: E731
      prompts, answers, backend=backend, judge=judge if backend == "judge" else None)
  rows, names, logs = [], [], []
  for i, source in enumerate(comma_list(a.models) or [config.model.source]):
    spec = common.model_spec(config, None if source == config.model.source else source)
    name = common.source_label(spec)
    log = ResumableRecords(
        out / f".answers_{i}.partial.jsonl",
        dict(common.answer_settings(config, spec, settings), battery_sha256=sha,
             deployment=deployment), f"the audit answers of model {i} ({name})", host)
    todo = [it for it in host.share(items) if it.id not in log.done]
    common.log.info("audit: model %d: %d answers on disk, %d to sample (host %d of %d)", i,
                    len(log.done), len(todo), host.index, host.count)
    if todo:
      model = (config_model() if source == config.model.source
               else common.load(config, mesh, "sample", source))
      common.say_start_model(f"audit (model {i})", model.source, "audit.models")
      sampler = TextSampler(model, settings, mesh=mesh, seed=config.seed)
      chat = lambda convs, row_ids, step: sampler.chat(convs, row_ids=row_ids, step=step)  # noqa: E731
      audit_run.answer_items(chat, todo, deployment, 4 * settings.batch_size,
                             desc=f"audit ({model.source})", on_chunk=lambda part, got: log.add(
                                 [dict(id=it.id, answer=x, earlier=list(e))
                                  for it, (x, e) in zip(part, got)]))
      del model, sampler  # free each model's params before the next loads
    common.barrier(f"{STAGE}: model {i} answered on every host")
    names.append(name)
    logs.append(log)
    if host.index != 0:
      continue
    answers = [(r["answer"], tuple(r["earlier"])) for r in log.merged([it.id for it in items])]
    p_break = (audit_run.judge_p_break(judge.logprobs, items, [x for x, _ in answers],
                                       [constitution.get(it.principle).statement for it in items])
               if a.judge else None)
    rows += audit_run.judge_items(items, answers, classify, name, p_break)
  return rows, names, logs


def report(config, rows, names, header, out) -> dict:
  """items.jsonl, per-model rates, model-vs-first comparisons, audit.md and the plots."""
  audit_run.write_results(out / "items.jsonl", rows)
  records = [json.loads(r.to_json()) for r in rows]
  loader = [r for r in records if r["model"] == "loader"]
  per_model = {n: loader + [r for r in records if r["model"] == n] for n in names}
  summaries = {n: audit_report.summarise(recs, comma_list(config.audit.families))
               for n, recs in per_model.items()}
  comparisons = [dict(a=names[0], b=n, **audit_report.compare(per_model[names[0]], per_model[n]))
                 for n in names[1:]]
  (out / "audit.md").write_text(audit_report.markdown(summaries, header, comparisons))
  return dict(models=summaries, comparisons=comparisons, plots=audit_report.plot_all(summaries, out),
              items_file=str(out / "items.jsonl"), report=str(out / "audit.md"))


def described(config, constitution) -> dict:
  """What decides an audit's items and answers, for audit.settings.json (a rerun with other
  settings into the same workdir is refused, naming the changed fields)."""
  return {"audit": {k: v for k, v in config.audit.to_dict().items() if k != "compare"},
          "model": config.model.to_dict(), "sampler": config.sampler.to_dict(),
          "seed": config.seed, "refusal_backend": config.refusal.backend,
          "constitution": [p.content() for p in constitution.principles],
          "layers": [l.name for l in constitution.layers]}


def run(config) -> dict:
  a, out, host = config.audit, common.layout(config).stage_dir(STAGE), common.host()
  if a.compare:
    return compare(config, out)
  constitution = constitution_stage.from_config(config)
  with common.generation_lock(out, host):
    common.check_output_settings(out / "audit.settings.json", described(config, constitution),
                                 f"the audit in {out}", host)
    return _audit(config, constitution, out, host)


def _audit(config, constitution, out, host) -> dict:
  a = config.audit
  base = constitution_stage.from_config(config, profiles="none")
  templates, bank = audit.load_templates(), audit.load_scenario_bank()
  mesh = common.generation_mesh(config)
  loaded = {}

  def config_model():  # config.model: the scenario writer, the judge, often the first audited
    if "head" not in loaded:
      loaded["head"] = common.load(config, mesh, rules="sample")
    return loaded["head"]

  writer = (TextSampler(config_model(), common.sampler_settings(config, max_new_tokens=40,
                                                                temperature=0.7),
                        mesh=mesh, seed=a.seed) if a.model_scenarios and not a.battery else None)
  items, battery_path, sizes = battery(config, constitution, bank, templates, writer, out, host)
  items += audit_routes.honour_items(constitution, base, bank, a.honour_items, comma_list(a.languages))
  sha = audit.file_sha256(battery_path)
  counts = {f: sum(it.kind == "attack" and it.family == f for it in items) for f in comma_list(a.families)}
  counts.update(route=sum(it.kind == "route" for it in items), honour=sum(it.kind == "honour" for it in items))
  print(f"audit battery {battery_path} sha256 {sha}; items per family/kind: {counts}", flush=True)
  deployment = audit_routes.deployment_prompt(constitution)
  answered, names, logs = answer(config, items, deployment, constitution, config_model, mesh, out,
                                 host, sha)
  if host.index != 0:  # host 0 judged every answer and writes the report
    return common.finish(STAGE, dict(hosts=host.count, host=host.index, battery_sha256=sha))
  probes = audit_routes.run_profile_probes(audit_routes.profile_probes(constitution),
                                           common.repo_path(config.constitution.path),
                                           out / "route_profiles")
  rows = [audit_run.ItemResult(audit_routes.probe_item(r, constitution.get(r.probe.principle)),
                               "loader", "", (), "", None, not r.refused, note=r.message)
          for r in probes]
  header = dict(constitution=constitution.name, layers=" -> ".join(l.name for l in constitution.layers),
                battery=battery_path, battery_sha256=sha, items=counts, seed=a.seed,
                sampling_seed=config.seed, temperature=config.sampler.temperature,
                max_new_tokens=a.max_new_tokens, classifier=config.refusal.backend,
                deployment_prompt=repr(deployment))
  written = report(config, rows + answered, names, header, out)
  summary = dict(header, **sizes, constitution=constitution_stage.describe(constitution), **written)
  (out / "audit.json").write_text(json.dumps(dict(summary, stage=STAGE), indent=1))
  for log in logs:
    log.remove()  # items.jsonl and audit.json now hold every answer
  # The printed line leaves out the per-principle rows and the comparisons' detail (audit.json).
  short = {n: {k: v for k, v in s.items() if k != "principle"} for n, s in summary["models"].items()}
  return common.finish(STAGE, dict(summary, models=short, comparisons=[
      {k: c[k] for k in ("a", "b", "n_paired", "family", "tier")} for c in summary["comparisons"]]))
