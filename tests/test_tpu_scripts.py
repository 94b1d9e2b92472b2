"""tpu/: each script's --dry-run prints exactly the gcloud / srun commands it would run; the
scripts parse (bash -n) and pass shellcheck where it is installed; the worker-side start/stop
scripts and the SLURM per-task wrapper do what they say when run for real on stand-ins."""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh")) + sorted((TPU / "remote").glob("*.sh")) + [TPU / "slurm_gpu.sbatch"]
SSH = "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"


def _env(tmp_path, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
  return dict(env, TMPDIR=str(tmp_path), **extra)


def _run(tmp_path, script: str, *args: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True,
                        env=_env(tmp_path, **env), timeout=60, check=False)


def _dry(tmp_path, script: str, *args: str) -> list[str]:
  out = _run(tmp_path, script, "--name", "my-tpu", "--zone", "us-central2-b", "--dry-run", *args)
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(TPU)))
def test_script_parses(script):
  out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS + [TPU / "common.sh"], ids=lambda p: str(p.relative_to(TPU)))
def test_shellcheck_is_clean(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed here (`which shellcheck` finds nothing)")
  out = subprocess.run(["shellcheck", "-x", "-s", "bash", str(script)], capture_output=True, text=True,
                       cwd=script.parent, check=False)
  assert out.returncode == 0, out.stdout


def test_create_takes_type_and_version_from_the_slice(tmp_path):
  assert _dry(tmp_path, "create.sh", "--slice", "v4-8") == [
      "gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b --accelerator-type=v4-8 "
      "--version=tpu-ubuntu2204-base"]


def test_create_with_project_spot_and_explicit_version(tmp_path):
  assert _dry(tmp_path, "create.sh", "--slice=v5e-16", "--project", "my-proj", "--spot",
              "--version", "v2-alpha-tpuv5-lite-next") == [
      "gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite-next --spot"]


def test_sync_archives_the_tree_and_unpacks_it_on_every_worker(tmp_path):
  archive = tmp_path / "cai_jax-my-tpu.tar.gz"
  assert _dry(tmp_path, "sync.sh") == [
      f"git -C {REPO} ls-files -z --cached --others --exclude-standard | tar -czf {archive} "
      f"-C {REPO} --null --ignore-failed-read -T -",
      f"gcloud compute tpus tpu-vm scp {archive} my-tpu:cai_jax.tar.gz --zone=us-central2-b --worker=all",
      f"{SSH} --command='mkdir -p ~/cai_jax && tar -xzf ~/cai_jax.tar.gz -C ~/cai_jax'"]


def test_setup_runs_the_installer_on_every_worker(tmp_path):
  assert _dry(tmp_path, "setup.sh") == [f"{SSH} --command='bash ~/cai_jax/tpu/remote/install.sh'"]


def test_launch_adds_the_slice_mesh_and_distributed_flags(tmp_path):
  assert _dry(tmp_path, "launch.sh", "--slice", "v5p-64", "--run", "exp1", "--", "sft", "--config",
              "experiments/sft.py", "--config.workdir=gs://b/exp1") == [
      f"{SSH} --command='bash ~/cai_jax/tpu/remote/start.sh exp1 sft --config experiments/sft.py "
      "--config.workdir=gs://b/exp1 --config.mesh.data=2 --config.mesh.fsdp=16 --config.mesh.tensor=1 "
      "--config.distributed.num_processes=-1'"]


def test_launch_keeps_a_mesh_and_process_count_the_command_sets(tmp_path):
  assert _dry(tmp_path, "launch.sh", "--slice", "v5p-64", "--", "sft", "--config", "x.py",
              "--config.mesh.fsdp=-1", "--config.distributed.num_processes=4") == [
      f"{SSH} --command='bash ~/cai_jax/tpu/remote/start.sh run sft --config x.py --config.mesh.fsdp=-1 "
      "--config.distributed.num_processes=4'"]


def test_launch_quotes_arguments_so_the_remote_shell_gets_them_back(tmp_path):
  args = ["sft", "--config", "x.py", "--config.sft.data=a b.jsonl", "it's"]
  line = _dry(tmp_path, "launch.sh", "--", *args)[0]
  command = next(w for w in shlex.split(line) if w.startswith("--command="))[len("--command="):]
  assert shlex.split(command) == ["bash", "~/cai_jax/tpu/remote/start.sh", "run", *args,
                                  "--config.distributed.num_processes=-1"]


def test_logs_follows_worker_zero_by_default(tmp_path):
  assert _dry(tmp_path, "logs.sh", "--run", "exp1") == [
      "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=0 "
      "--command='tail -n 200 -F ~/cai_jax_logs/exp1.log'"]
  assert _dry(tmp_path, "logs.sh", "--worker", "all", "--no-follow") == [
      f"{SSH} --command='tail -n 200 ~/cai_jax_logs/run.log'"]


def test_stop_stops_the_run_and_with_vm_the_vm(tmp_path):
  assert _dry(tmp_path, "stop.sh", "--run", "exp1", "--vm") == [
      f"{SSH} --command='bash ~/cai_jax/tpu/remote/stop.sh exp1'",
      "gcloud compute tpus tpu-vm stop my-tpu --zone=us-central2-b"]


def test_delete(tmp_path):
  assert _dry(tmp_path, "delete.sh") == [
      "gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet"]


def test_up_is_create_sync_setup_launch(tmp_path):
  flags = ["--slice", "v4-8", "--", "sft", "--config", "x.py"]
  want = sum((_dry(tmp_path, s, *flags) for s in ("create.sh", "sync.sh", "setup.sh", "launch.sh")), [])
  assert _dry(tmp_path, "up.sh", *flags) == want and len(want) == 6


def test_flags_from_the_environment(tmp_path):
  out = _run(tmp_path, "delete.sh", "--dry-run", TPU_NAME="env-tpu", TPU_ZONE="europe-west4-a")
  assert out.stdout == "gcloud compute tpus tpu-vm delete env-tpu --zone=europe-west4-a --quiet\n"


def test_missing_zone_and_unknown_slice_are_errors(tmp_path):
  out = _run(tmp_path, "create.sh", "--name", "x", "--slice", "v4-8", "--dry-run")
  assert out.returncode == 2 and "missing --zone" in out.stderr
  out = _run(tmp_path, "create.sh", "--name", "x", "--zone", "z", "--slice", "v9-1", "--dry-run")
  assert out.returncode == 2 and "unknown slice 'v9-1'; known: v4-8 v4-32" in out.stderr
  out = _run(tmp_path, "delete.sh", "--name", "x", "--zone", "z", "--nmae", "y")
  assert out.returncode == 2 and "unknown flag --nmae" in out.stderr


def test_slice_table_matches_the_planner():
  from cai_jax.train.memory import SLICES
  rows = [line.split("\t") for line in (TPU / "slices.tsv").read_text().splitlines()
          if line and not line.startswith("#")]
  table = {r[0]: (r[1], r[2], int(r[3]), float(r[4]), int(r[5]), int(r[6]), int(r[7])) for r in rows}
  assert table == {s.name: (s.accelerator_type, s.runtime_version, s.devices, s.hbm_gib, s.data,
                            s.fsdp, s.tensor) for s in SLICES.values()}
  assert all(s.data * s.fsdp * s.tensor == s.devices for s in SLICES.values())
  assert {"v4-8", "v5e-16", "v5p-64"} <= set(table)


def _fake_scontrol(tmp_path) -> pathlib.Path:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  _script(bin_dir / "scontrol", '[ "$1 $2" = "show hostnames" ] || exit 1\necho gpu-001\necho gpu-002\n')
  return bin_dir


def _script(path: pathlib.Path, body: str) -> None:
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_dry_run_prints_the_srun_line(tmp_path):
  bin_dir = _fake_scontrol(tmp_path)
  out = _run(tmp_path, "slurm_gpu.sbatch", "--dry-run", "sft", "--config", "experiments/sft.py",
             PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-[001-002]", SLURM_NTASKS="16")
  assert out.returncode == 0, out.stderr
  assert out.stdout == (
      "srun --kill-on-bad-exit=1 bash -c 'CUDA_VISIBLE_DEVICES=\"$SLURM_LOCALID\" exec \"$@\" "
      "--config.distributed.process_id=\"$SLURM_PROCID\"' cai_jax python -m cai_jax sft --config "
      "experiments/sft.py --config.distributed.coordinator_address=gpu-001:12355 "
      "--config.distributed.num_processes=16\n")


def test_slurm_gives_every_task_its_gpu_and_process_id(tmp_path):
  # Stand-ins: srun runs its command once per task (2 nodes x 2 tasks) with SLURM's variables;
  # "python" records its GPU and arguments.
  bin_dir = _fake_scontrol(tmp_path)
  _script(bin_dir / "srun",
          'shift\nfor p in 0 1 2 3; do SLURM_PROCID=$p SLURM_LOCALID=$((p % 2)) "$@"; done\n')
  _script(bin_dir / "fakepython", 'echo "gpu=$CUDA_VISIBLE_DEVICES $*"\n')
  out = _run(tmp_path, "slurm_gpu.sbatch", "eval-hhh", "--config", "x.py",
             PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-[001-002]", SLURM_NTASKS="4",
             PYTHON="fakepython", CAI_JAX_PORT="4444")
  assert out.returncode == 0, out.stderr
  common = ("-m cai_jax eval-hhh --config x.py --config.distributed.coordinator_address=gpu-001:4444 "
            "--config.distributed.num_processes=4")
  assert out.stdout.splitlines() == [f"gpu={p % 2} {common} --config.distributed.process_id={p}"
                                     for p in range(4)]


def test_worker_start_detaches_logs_and_stop_ends_it(tmp_path):
  # A copy of the worker scripts in a fake project whose .venv python prints and sleeps.
  project = tmp_path / "cai_jax"
  (project / "tpu").mkdir(parents=True)
  shutil.copytree(TPU / "remote", project / "tpu" / "remote")
  (project / ".venv" / "bin").mkdir(parents=True)
  _script(project / ".venv" / "bin" / "python", 'echo "args: $*"\nexec sleep 300\n')
  env = _env(tmp_path, HOME=str(tmp_path))
  start = [str(project / "tpu/remote/start.sh"), "exp1", "sft", "--config", "x.py"]
  out = subprocess.run(start, capture_output=True, text=True, env=env, timeout=30, check=False)
  assert out.returncode == 0 and "started exp1" in out.stdout, out.stderr
  pid = int((tmp_path / "cai_jax_logs/exp1.pid").read_text())
  try:
    _check_log_restart_and_stop(tmp_path, project, env, start, pid)
  finally:
    if _alive(pid):
      os.killpg(pid, 9)


def _check_log_restart_and_stop(tmp_path, project, env, start, pid):
  log = tmp_path / "cai_jax_logs/exp1.log"
  for _ in range(50):
    if log.exists() and log.read_text():
      break
    time.sleep(0.1)
  assert log.read_text() == "args: -m cai_jax sft --config x.py\n"
  again = subprocess.run(start, capture_output=True, text=True, env=env, timeout=30, check=False)
  assert again.returncode == 1 and "still running" in again.stderr
  out = subprocess.run([str(project / "tpu/remote/stop.sh"), "exp1"], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
  assert out.returncode == 0 and f"stopped exp1 (pid {pid})" in out.stdout
  assert not (tmp_path / "cai_jax_logs/exp1.pid").exists()
  assert not _alive(pid)


def _alive(pid: int) -> bool:
  """Whether pid runs (a zombie waiting for its reaper counts as ended)."""
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state != "Z"
