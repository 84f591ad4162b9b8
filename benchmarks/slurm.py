"""Run a list of experiments as a Slurm job array: one array task = one DVC experiment, brought back through shared
remotes.

    python -m benchmarks.slurm submit configs/grids/shortcut_benchmark.yaml --size gpu --partition gpu --time 2:00:00
    python -m benchmarks.slurm status configs/grids/shortcut_benchmark.yaml --size gpu
    python -m benchmarks.slurm resubmit configs/grids/shortcut_benchmark.yaml --size gpu     # failed and missing ones
    python -m benchmarks.slurm collect configs/grids/shortcut_benchmark.yaml --size gpu      # then: dvc exp show
    python -m benchmarks.slurm submit my_sweep.txt --targets discover@clever_hans     # a sets file

The list is the one :mod:`benchmarks.sweep` runs through DVC's queue on one machine (a grid file at a size, a sets
file, ``--only`` some of them). ``submit`` pushes the current commit to a shared git repository, writes a job script
and one small file per task into the shared folder, and calls ``sbatch --array``. Each task

1. stops at once when its experiment is already in the shared git repository (a finished task is never redone);
2. clones the shared repository into a folder of its own (``--workdir``, node-local by default) and checks out the
   submitting commit: a clean copy of the committed project (uncommitted changes are not part of the run);
3. runs ``dvc exp run -n NAME -S key=value ... TARGETS`` there (not the queue);
4. only when that succeeded pushes the outputs of the stages it ran to the shared DVC remote and then the experiment
   (``dvc exp push``) to the shared git repository, so an experiment there always has its outputs;
5. removes its folder, whatever happened. A task that dies (killed, out of time or memory, a failing stage) pushes
   nothing: its experiment shows as failed and ``resubmit`` runs it again.

``status`` names each experiment done (in the shared git repository, or already here), queued, running, failed
(submitted, no longer in Slurm's queue, no result) or missing (never submitted), with its task's log and, for a
failure, Slurm's notice in that log (cancelled, time limit, out of memory) or else its last line. ``collect`` brings
the finished experiments here (``dvc exp pull`` from the shared git repository, their outputs from the shared DVC
remote); ``dvc exp show`` then lists them and the benchmark's aggregation reads them like the queue's.

Shared places (on the cluster's shared file system; defaults under ``--shared``, ``.slurm/`` of this project)::

    <shared>/git/                      bare git repository: the submitted commits and every finished experiment
    <shared>/dvc/                      DVC remote (a local one): the outputs of finished experiments
    <shared>/jobs/<commit>/<submission>/job.sh, tasks/, logs/task-<index>.log, submission.json

Why plain ``sbatch --array`` with a job script this command writes, not submitit: a task is a short shell sequence
of git and dvc commands, not a Python function whose return value must travel back (results travel through the git
and DVC remotes); the job script is a file a cluster user can read, change and submit by hand (the course material
ships ``.slurm`` scripts); it needs nothing installed beyond Slurm's own clients; and ``squeue`` shows the tasks by
name on any cluster.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.experiments import REPO, Experiment
from benchmarks.sweep import dvc, experiment_list, finished_experiments, with_data_root

STATES = ("done", "queued", "running", "failed", "missing")
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
DVC_REMOTE_NAME = "slurm-shared"


@dataclass
class Resources:
    """What each array task asks Slurm for. ``None`` leaves it to the cluster's defaults."""

    partition: str | None = None
    time: str = "04:00:00"
    mem: str = "16G"
    cpus_per_task: int = 4
    gpus: int = 0
    max_parallel: int | None = None          # at most this many tasks at once (--array=...%N)
    sbatch_args: list[str] = field(default_factory=list)   # anything else: --account=..., --qos=..., --constraint=...

    def directives(self) -> list[str]:
        lines = [f"--cpus-per-task={self.cpus_per_task}", f"--mem={self.mem}", f"--time={self.time}"]
        if self.partition:
            lines.append(f"--partition={self.partition}")
        if self.gpus:
            lines.append(f"--gpus={self.gpus}")
        return lines + list(self.sbatch_args)


@dataclass
class Shared:
    """The shared places: a folder for job scripts and logs, a git repository, a DVC remote."""

    folder: Path
    git: str
    dvc: str

    @classmethod
    def under(cls, folder: Path, git: str | None = None, dvc_remote: str | None = None) -> "Shared":
        folder = folder.resolve()
        return cls(folder, git or str(folder / "git"), dvc_remote or str(folder / "dvc"))

    def jobs(self, commit: str) -> Path:
        return self.folder / "jobs" / commit[:12]


@dataclass
class TaskState:
    state: str                 # one of STATES
    log: Path | None = None    # the log of its latest task
    detail: str = ""           # a failure's last log line; Slurm's state of a queued or running task


# --------------------------------------------------------------------------------------------
# git and Slurm
# --------------------------------------------------------------------------------------------
def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed: {(result.stdout + result.stderr).strip()[-2000:]}")
    return result.stdout


def slurm(*args: str) -> str:
    """Run a Slurm client; its stdout, or an error naming the command and what it said."""
    try:
        result = subprocess.run(list(args), capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"{args[0]} not found: run this on a Slurm login node (or install Slurm's clients)")
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def head_commit(repo: Path) -> str:
    return git("rev-parse", "HEAD", cwd=repo).strip()


def experiment_ref_prefix(commit: str) -> str:
    """Where DVC keeps the experiments of a baseline commit: refs/exps/<2 hex>/<38 hex>/<name>."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/"


def shared_done(shared: Shared, commit: str) -> set[str]:
    """Names of the experiments of ``commit`` in the shared git repository."""
    if _is_local(shared.git) and not Path(shared.git).exists():
        return set()
    prefix = experiment_ref_prefix(commit)
    refs = git("ls-remote", shared.git, f"{prefix}*").split()
    return {ref[len(prefix):] for ref in refs if ref.startswith(prefix)}


def _is_local(url: str) -> bool:
    return "://" not in url and not (":" in url.split("/")[0])


def ensure_shared(shared: Shared, repo: Path, commit: str) -> None:
    """Create the bare git repository and the DVC remote folder when they are local paths; push ``commit``."""
    if _is_local(shared.git) and not (Path(shared.git) / "HEAD").exists():
        Path(shared.git).mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", shared.git)
        git("config", "receive.shallowUpdate", "true", cwd=Path(shared.git))   # a shallow clone may submit too
    if _is_local(shared.dvc):
        Path(shared.dvc).mkdir(parents=True, exist_ok=True)
    git("push", "--quiet", shared.git, f"{commit}:refs/heads/slurm/{commit[:12]}", cwd=repo)


# --------------------------------------------------------------------------------------------
# Submissions: what was submitted when, as which job
# --------------------------------------------------------------------------------------------
@dataclass
class Submission:
    folder: Path
    job_id: str
    names: list[str]           # task index -> experiment name
    resources: Resources
    workdir: str | None = None

    def log(self, index: int) -> Path:
        return self.folder / "logs" / f"task-{index}.log"


def submissions(shared: Shared, commit: str) -> list[Submission]:
    """The submissions of ``commit``, oldest first."""
    found = []
    base = shared.jobs(commit)
    for folder in sorted(base.iterdir()) if base.exists() else []:
        record = folder / "submission.json"
        if record.exists():
            data = json.loads(record.read_text())
            found.append(Submission(folder, data["job_id"], data["names"], Resources(**data["resources"]),
                                    data.get("workdir")))
    return found


def slurm_tasks(job_name: str) -> dict[str, str]:
    """{"<job id>_<index>": Slurm state} of the tasks of ``job_name`` still in Slurm's queue."""
    out = slurm("squeue", "--noheader", "--array", f"--user={getpass.getuser()}", f"--name={job_name}",
                "--format=%i %T")
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def job_name(commit: str) -> str:
    return f"xai-{commit[:8]}"


def why_failed(log: Path) -> str:
    """A failed task's reason from its log: Slurm's own notice (``*** JOB 7 ON node CANCELLED AT ... DUE TO TIME
    LIMIT ***``) when there is one, else the log's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log: the task never started)"
    notices = [line for line in lines if "*** JOB" in line or "oom-kill" in line or "oom_kill" in line]
    return (notices or lines or ["(empty log)"])[-1][-200:]


def states(experiments: list[Experiment], shared: Shared, repo: Path = REPO,
           here: set[str] | None = None) -> dict[str, TaskState]:
    """Each experiment's state (see the module's help); ``here``: the names finished in ``repo`` when known (else
    read by ``dvc exp show``). Slurm's queue is read before the shared repository, so a task that finishes in
    between is seen done, never failed."""
    commit = head_commit(repo)
    latest: dict[str, tuple[Submission, int]] = {}
    for submission in submissions(shared, commit):
        for index, name in enumerate(submission.names):
            latest[name] = (submission, index)
    in_queue = slurm_tasks(job_name(commit)) if latest else {}
    done = shared_done(shared, commit) | (set(finished_experiments(repo)) if here is None else here)
    result = {}
    for experiment in experiments:
        name = experiment.name
        if name not in latest:
            result[name] = TaskState("done" if name in done else "missing")
            continue
        submission, index = latest[name]
        log = submission.log(index)
        slurm_state = in_queue.get(f"{submission.job_id}_{index}")
        if name in done:
            result[name] = TaskState("done", log)
        elif slurm_state is None:
            result[name] = TaskState("failed", log, why_failed(log))
        else:
            result[name] = TaskState("queued" if slurm_state in SLURM_QUEUED else "running", log, slurm_state.lower())
    return result


# --------------------------------------------------------------------------------------------
# The job script
# --------------------------------------------------------------------------------------------
def job_script(submission: Path, commit: str, shared: Shared, resources: Resources, count: int,
               workdir: str | None, python: str) -> str:
    q = shlex.quote
    array = f"0-{count - 1}" + (f"%{resources.max_parallel}" if resources.max_parallel else "")
    directives = [f"--job-name={job_name(commit)}", f"--array={array}",
                  f"--output={submission / 'logs' / 'task-%a.log'}", *resources.directives()]
    header = "\n".join(f"#SBATCH {line}" for line in directives)
    node_workdir = q(workdir) if workdir else '"${TMPDIR:-/tmp}"'     # expanded on the node
    return f"""#!/bin/bash
{header}
# Written by `python -m benchmarks.slurm submit`: array task i runs the DVC experiment of tasks/i.name in a clean
# clone of commit {commit[:12]} and pushes it to the shared remotes only when it succeeded.
set -euo pipefail
COMMIT={commit}
SHARED_GIT={q(shared.git)}
SHARED_DVC={q(shared.dvc)}
TASKS={q(str(submission / 'tasks'))}
WORKDIR={node_workdir}
PYTHON={q(python)}
export PATH="$(dirname "$PYTHON"):$PATH"          # the stages' python: the environment that submitted
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}

i=$SLURM_ARRAY_TASK_ID
name=$(cat "$TASKS/$i.name")
mapfile -t run_args < "$TASKS/$i.args"
mapfile -t targets < "$TASKS/$i.targets"
echo "task $i: experiment $name of commit $COMMIT on $(hostname)"

# A finished experiment is never redone.
if git ls-remote --exit-code "$SHARED_GIT" "refs/exps/${{COMMIT:0:2}}/${{COMMIT:2}}/$name" >/dev/null; then
  echo "task $i: $name is already in $SHARED_GIT; nothing to do"
  exit 0
fi

# A clean copy of the committed project, removed however the task ends (only SIGKILL leaves it behind, and then
# nothing has been pushed either).
work="$WORKDIR/xai-slurm-${{SLURM_ARRAY_JOB_ID}}_$i"
trap 'rc=$?; rm -rf "$work"; [ $rc -eq 0 ] || echo "task $i: $name FAILED (exit $rc); nothing pushed"' EXIT
trap 'echo "task $i: $name stopped by a signal"; exit 143' TERM INT
rm -rf "$work"
git clone --quiet --no-checkout "$SHARED_GIT" "$work"
cd "$work"
git checkout --quiet --detach "$COMMIT"
"$PYTHON" -m dvc remote add --local {DVC_REMOTE_NAME} "$SHARED_DVC"

"$PYTHON" -m dvc exp run "${{run_args[@]}}"

# Outputs first, then the experiment: an experiment in the shared repository always has its outputs.
"$PYTHON" -m dvc push --quiet --with-deps --remote {DVC_REMOTE_NAME} "${{targets[@]}}"
"$PYTHON" -m dvc exp push --no-cache origin "$name"
echo "task $i: $name done and pushed"
"""


def submit(experiments: list[Experiment], resources: Resources, shared: Shared, repo: Path = REPO,
           workdir: str | None = None, python: str = sys.executable, dry_run: bool = False) -> Submission | None:
    """Submit the experiments that are neither done nor queued or running as one job array; None when there is
    nothing to submit (or on a dry run, which writes the job script and stops)."""
    commit = head_commit(repo)
    changed = git("status", "--porcelain", "--untracked-files=no", cwd=repo).strip()
    if changed:
        print(f"slurm: note: uncommitted changes are not part of the run (tasks check out {commit[:12]}):\n  "
              + "\n  ".join(changed.splitlines()[:10]), file=sys.stderr)
    before = states(experiments, shared, repo)
    chosen = [e for e in experiments if before[e.name].state in ("missing", "failed")]
    skipped = {name: s.state for name, s in before.items() if s.state not in ("missing", "failed")}
    if skipped:
        print(f"slurm: not submitted ({len(skipped)}): "
              + ", ".join(f"{name} ({state})" for name, state in skipped.items()), file=sys.stderr)
    if not chosen:
        print("slurm: nothing to submit", file=sys.stderr)
        return None
    if not dry_run:
        ensure_shared(shared, repo, commit)
    folder = shared.jobs(commit) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    (folder / "tasks").mkdir(parents=True)
    (folder / "logs").mkdir()
    for index, experiment in enumerate(chosen):
        experiment = with_data_root(experiment, repo)
        (folder / "tasks" / f"{index}.name").write_text(experiment.name + "\n")
        (folder / "tasks" / f"{index}.args").write_text("".join(f"{arg}\n" for arg in experiment.run_args()))
        (folder / "tasks" / f"{index}.targets").write_text("".join(f"{t}\n" for t in experiment.targets))
    script = folder / "job.sh"
    script.write_text(job_script(folder, commit, shared, resources, len(chosen), workdir, python))
    if dry_run:
        print(f"slurm: dry run: {script} ({len(chosen)} tasks) not submitted", file=sys.stderr)
        return None
    job_id = slurm("sbatch", "--parsable", str(script)).strip().split(";")[0]
    names = [e.name for e in chosen]
    (folder / "submission.json").write_text(json.dumps(
        {"job_id": job_id, "names": names, "resources": asdict(resources), "workdir": workdir, "commit": commit},
        indent=1))
    print(f"slurm: job {job_id}: {len(names)} tasks ({', '.join(names)}); logs in {folder / 'logs'}", file=sys.stderr)
    return Submission(folder, job_id, names, resources, workdir)


def wait(experiments: list[Experiment], shared: Shared, repo: Path = REPO,
         poll_seconds: float = 10.0) -> dict[str, TaskState]:
    """Wait until no experiment is queued or running, a line per one that ends; the final states."""
    reported: set[str] = set()
    started = time.monotonic()
    here = set(finished_experiments(repo))        # tasks push to the shared places, not here: read once
    while True:
        now = states(experiments, shared, repo, here)
        for name, state in now.items():
            if state.state in ("done", "failed") and name not in reported:
                reported.add(name)
                print(f"slurm: {name}: {state.state} after {time.monotonic() - started:.0f} s", file=sys.stderr)
        if not any(s.state in ("queued", "running") for s in now.values()):
            return now
        time.sleep(poll_seconds)


def collect(experiments: list[Experiment], shared: Shared, repo: Path = REPO, outputs: bool = True) -> list[str]:
    """Pull the finished experiments of the list that are not here yet; their names."""
    commit = head_commit(repo)
    wanted = {e.name for e in experiments}
    here = set(finished_experiments(repo))
    names = sorted((shared_done(shared, commit) & wanted) - here)
    if not names:
        print("slurm: nothing new to collect", file=sys.stderr)
        return []
    if outputs:
        dvc("remote", "add", "--local", "--force", DVC_REMOTE_NAME, shared.dvc, cwd=repo)
        dvc("exp", "pull", "--remote", DVC_REMOTE_NAME, shared.git, *names, cwd=repo)
    else:
        dvc("exp", "pull", "--no-cache", shared.git, *names, cwd=repo)
    print(f"slurm: collected {len(names)}: {', '.join(names)} (dvc exp show lists them)", file=sys.stderr)
    return names


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def print_states(found: dict[str, TaskState], repo: Path) -> None:
    width = max((len(name) for name in found), default=10)
    for name, state in found.items():
        log = ""
        if state.log is not None:
            log = os.path.relpath(state.log, repo) if state.log.is_relative_to(repo) else str(state.log)
        print(f"{name:{width}s}  {state.state:8s}  {log}" + (f"  {state.detail}" if state.detail else ""))
    counts = {s: sum(t.state == s for t in found.values()) for s in STATES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n), file=sys.stderr)


def resources_from(args: argparse.Namespace, previous: Resources | None) -> Resources:
    """The options given, else the previous submission's, else the defaults (a GPU for the grid's gpu size)."""
    base = asdict(previous) if previous else asdict(Resources(gpus=1 if args.size == "gpu" else 0))
    for key in ("partition", "time", "mem", "cpus_per_task", "gpus", "max_parallel"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.sbatch:
        base["sbatch_args"] = list(args.sbatch)
    return Resources(**base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["submit", "status", "resubmit", "collect"])
    parser.add_argument("source", help="a grid file (configs/grids/shortcut_benchmark.yaml) or a sets file")
    parser.add_argument("--size", help="the grid's size (cpu, gpu); gpu is sized for a GPU per task: it asks for one "
                                       "unless --gpus says otherwise")
    parser.add_argument("--only", nargs="+", help="variant or experiment names")
    parser.add_argument("--targets", nargs="*", default=[], help="DVC targets of a sets file's experiments")
    parser.add_argument("--repo", type=Path, default=REPO, help="the DVC project to submit from (default: this one)")
    where = parser.add_argument_group("shared places (on the cluster's shared file system)")
    where.add_argument("--shared", type=Path, help="folder of job scripts, logs and, by default, the remotes "
                                                   "(default: .slurm in the project)")
    where.add_argument("--git-remote", help="git repository of submitted commits and finished experiments "
                                            "(default: <shared>/git, created bare)")
    where.add_argument("--dvc-remote", help="DVC remote URL for the experiments' outputs (default: <shared>/dvc)")
    where.add_argument("--workdir", help="where each task clones the project, on the node (default: $TMPDIR or /tmp)")
    where.add_argument("--python", default=sys.executable,
                       help="the Python of the environment tasks run in, with dvc and the pipeline's requirements "
                            "(default: this one)")
    res = parser.add_argument_group("resources per task (submit; resubmit reuses the last submission's, and its "
                                    "--workdir)")
    res.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    res.add_argument("--time", help="time limit, e.g. 04:00:00 (default)")
    res.add_argument("--mem", help="memory, e.g. 16G (default)")
    res.add_argument("--cpus-per-task", type=int, help="CPU cores (default 4)")
    res.add_argument("--gpus", type=int, help="GPUs (default: 1 for --size gpu, else 0)")
    res.add_argument("--max-parallel", type=int, help="at most this many tasks at once")
    res.add_argument("--sbatch", action="append", help="any other sbatch option, e.g. --sbatch=--account=lab "
                                                       "(repeatable)")
    parser.add_argument("--wait", action="store_true", help="submit/resubmit: wait until every task has ended")
    parser.add_argument("--dry-run", action="store_true", help="submit/resubmit: write the job script, do not submit")
    parser.add_argument("--no-outputs", action="store_true", help="collect: experiments and metrics only; outputs "
                                                                  "stay on the shared DVC remote")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    shared = Shared.under(args.shared or repo / ".slurm", args.git_remote, args.dvc_remote)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        experiments = experiment_list(args.source, args.size, args.only, args.targets)
        if args.command == "status":
            print_states(states(experiments, shared, repo), repo)
            return 0
        if args.command == "collect":
            collect(experiments, shared, repo, outputs=not args.no_outputs)
            return 0
        previous, workdir = None, args.workdir
        if args.command == "resubmit":
            earlier = submissions(shared, head_commit(repo))
            if earlier:
                previous, workdir = earlier[-1].resources, args.workdir or earlier[-1].workdir
        submission = submit(experiments, resources_from(args, previous), shared, repo, workdir, args.python,
                            args.dry_run)
        if submission and args.wait:
            final = wait(experiments, shared, repo)
            return 1 if any(s.state == "failed" for s in final.values()) else 0
        return 0
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
