"""Run a list of experiments through DVC's own queue on this machine, one DVC experiment each.

    python -m benchmarks.sweep run configs/grids/shortcut_benchmark.yaml --size cpu --jobs 1
    python -m benchmarks.sweep run configs/grids/shortcut_benchmark.yaml --size cpu --only text-1-white-0
    python -m benchmarks.sweep run my_sweep.txt --targets discover@clever_hans      # a sets file
    python -m benchmarks.sweep status configs/grids/shortcut_benchmark.yaml --size cpu

``run`` queues every experiment of the list that has no result yet on the current commit (``dvc exp run --queue``),
starts ``--jobs`` workers (``dvc queue start``), waits for them with a line per finished experiment, and names every
failure with the end of its log. An experiment that is done is never redone; one that failed is queued again by the
next ``run`` (``--only`` limits a run to some), and so is one left running by a worker that died (a reboot: the
queue shows it running with no active worker). ``status`` lists each experiment as done, queued, running, failed or
missing. ``dvc exp show`` lists the finished experiments; the aggregation of the benchmark reads them back.

The queue runs each experiment in a copy of the committed project, without ignored files: a relative
``data.root`` (the raw MNIST files, data/raw) is passed on as an absolute path so that the copy reads the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from benchmarks.experiments import REPO, Experiment, read_grid, read_sets

STATES = ("done", "queued", "running", "failed", "missing")


def dvc(*args: str, check: bool = True, cwd: Path = REPO) -> str:
    """Run ``dvc`` (the one beside this Python) in ``cwd``; its stdout, or an error naming the command."""
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args[:3])} ...` failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def start_workers(jobs: int, cwd: Path = REPO) -> None:
    """``dvc queue start -j jobs``. The workers it starts keep the pipes of its output open, so its output goes to
    nowhere instead of to a pipe this process would wait on until the last worker ends."""
    command = [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)]
    if subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        raise RuntimeError(f"`dvc queue start -j {jobs}` failed in {cwd}; see `dvc queue status`")


def experiment_list(source: str, size: str | None, only: list[str] | None, targets: list[str]) -> list[Experiment]:
    """The experiments of a grid file (``--size``) or of a sets file (``--targets``)."""
    path = Path(source)
    text = path.read_text()
    is_grid = path.suffix in (".yaml", ".yml") and isinstance(yaml.safe_load(text), dict)
    if is_grid:
        if size is None:
            raise SystemExit(f"{source} is a grid file: give --size ({', '.join(read_grid(path).sizes)})")
        return read_grid(path).experiments(size, only)
    chosen = read_sets(path, tuple(targets))
    return [e for e in chosen if not only or e.name in only]


def with_data_root(experiment: Experiment, root: Path = REPO) -> Experiment:
    """The experiment with ``data.root`` made absolute when params.yaml gives a relative one that exists here."""
    if "data.root" in experiment.overrides:
        return experiment
    committed = yaml.safe_load((root / "params.yaml").read_text()).get("data", {}).get("root", "data/raw")
    path = Path(committed)
    if path.is_absolute() or not (root / path).exists():
        return experiment
    return replace(experiment, overrides={**experiment.overrides, "data.root": str((root / path).resolve())})


# --------------------------------------------------------------------------------------------
# State of each experiment
# --------------------------------------------------------------------------------------------
@dataclass
class ExperimentResult:
    """A finished experiment of the current commit, as `dvc exp show --json` gives it."""

    name: str
    rev: str
    params: dict       # params.yaml, as run
    metrics: dict      # {metrics file: its data}; files that failed to load are left out


def finished_experiments(cwd: Path = REPO) -> dict[str, ExperimentResult]:
    """{name: result} of the experiments based on the current commit (``dvc exp show --json``)."""
    return finished_in(json.loads(dvc("exp", "show", "--json", "--no-pager", cwd=cwd) or "[]"))


def finished_in(shown: list[dict]) -> dict[str, ExperimentResult]:
    """{name: result} of the finished experiments in ``dvc exp show --json``'s output. Queued and running experiments
    are listed there too, under their names, with the baseline's metrics: those carry an ``executor`` state and are
    left out, as are failed ones."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in experiment.get("revs") or []:
                name, data = rev.get("name"), rev.get("data") or {}
                if not name or rev.get("error"):
                    continue
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = {path: entry["data"] for path, entry in (data.get("metrics") or {}).items() if "data" in entry}
                found[name] = ExperimentResult(name, rev.get("rev", ""), params, metrics)
    return found


STATE_RANK = {"failed": 0, "done": 1, "queued": 2, "running": 3}   # a name queued again: the higher rank is its state


def queue_states(cwd: Path = REPO) -> dict[str, str]:
    """{name: queued | running | failed | done} from `dvc queue status`."""
    return parse_queue_status(dvc("queue", "status", cwd=cwd))


def parse_queue_status(table: str) -> dict[str, str]:
    """{name: state} from `dvc queue status`'s table (task, name, created, status). A name queued again after a
    failure has two rows; the one that is still under way (or done) is the name's state."""
    states: dict[str, str] = {}
    for line in table.splitlines():
        words = line.split()
        if len(words) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", words[0]):
            status = {"success": "done"}.get(words[-1].lower(), words[-1].lower())
            if STATE_RANK.get(status, -1) >= STATE_RANK.get(states.get(words[1]), -1):
                states[words[1]] = status
    return states


def stale_running(table: str) -> list[str]:
    """Names `dvc queue status` shows running while it reports no active worker: their worker died (a reboot, a
    killed shell), so they will never finish, and only `dvc queue kill` turns them into failures to run again."""
    workers = re.search(r"Worker status:\s*(\d+) active", table)
    if workers is None or int(workers.group(1)) > 0:
        return []
    return sorted(name for name, state in parse_queue_status(table).items() if state == "running")


def kill_stale(cwd: Path = REPO) -> None:
    stale = stale_running(dvc("queue", "status", cwd=cwd))
    if stale:
        print(f"sweep: {', '.join(stale)} left running by a worker that is gone; killed, to run again",
              file=sys.stderr)
        dvc("queue", "kill", *stale, check=False, cwd=cwd)


def states(experiments: list[Experiment], cwd: Path = REPO) -> dict[str, str]:
    """Each experiment's state: done (a result on this commit), queued, running, failed, or missing."""
    finished, queued = finished_experiments(cwd), queue_states(cwd)
    result = {}
    for experiment in experiments:
        state = queued.get(experiment.name, "missing")
        result[experiment.name] = "done" if experiment.name in finished else state if state != "done" else "missing"
    return result


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def run(experiments: list[Experiment], jobs: int, poll_seconds: float = 20.0, cwd: Path = REPO) -> int:
    """Queue what is not done or under way, start ``jobs`` workers, wait, report; the number of failures."""
    kill_stale(cwd)
    before = states(experiments, cwd)
    to_queue = [e for e in experiments if before[e.name] in ("missing", "failed")]
    if any(before[e.name] == "failed" for e in to_queue):
        dvc("queue", "remove", "--failed", cwd=cwd)
    print(f"sweep: {len(experiments)} experiments: {sum(s == 'done' for s in before.values())} done, "
          f"{len(to_queue)} to queue", file=sys.stderr)
    for experiment in to_queue:
        dvc("exp", "run", "--queue", *with_data_root(experiment, cwd).run_args(), cwd=cwd)
    waiting = [e.name for e in experiments if before[e.name] != "done"]
    if waiting:
        start_workers(jobs, cwd)
    reported: set[str] = set()
    started, idle_polls = time.monotonic(), 0
    while waiting:   # the queue's own table while workers run (`dvc exp show` trips over half-made workspaces)
        queued = queue_states(cwd)
        for name in waiting:
            state = queued.get(name, "missing")
            if state in ("done", "failed") and name not in reported:
                reported.add(name)
                print(f"sweep: {name}: {'finished' if state == 'done' else state} after "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        waiting = [name for name in waiting if name not in reported]
        idle_polls = 0 if any(queued.get(name) in ("queued", "running") for name in waiting) else idle_polls + 1
        if waiting and idle_polls >= 3:   # neither queued nor running, three times over: nothing more will come
            break
        if waiting:
            time.sleep(poll_seconds)
    final = states(experiments, cwd)
    failed = [name for name, state in final.items() if state != "done"]
    for name in failed:
        log = dvc("queue", "logs", name, check=False, cwd=cwd).strip().splitlines()
        print(f"sweep: {name} failed; the end of its log (`dvc queue logs {name}`):\n  " + "\n  ".join(log[-8:]),
              file=sys.stderr)
    print(f"sweep: {len(final) - len(failed)} of {len(final)} done" + (f"; failed: {', '.join(failed)} (run again to "
          f"retry them, --only NAME for one)" if failed else ""), file=sys.stderr)
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "status"])
    parser.add_argument("source", help="a grid file (configs/grids/shortcut_benchmark.yaml) or a sets file")
    parser.add_argument("--size", help="the grid's size (cpu, gpu)")
    parser.add_argument("--only", nargs="+", help="variant or experiment names")
    parser.add_argument("--targets", nargs="*", default=[], help="DVC targets of a sets file's experiments")
    parser.add_argument("--jobs", type=int, default=1, help="queue workers (experiments at once)")
    args = parser.parse_args(argv)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # stages' python
    try:
        experiments = experiment_list(args.source, args.size, args.only, args.targets)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "status":
        for name, state in states(experiments).items():
            print(f"{name:40s} {state}")
        return 0
    return 1 if run(experiments, args.jobs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
