"""The same tiny grid through a Slurm job array and through DVC's queue, on this machine: wall times and their ratio.

    python -m benchmarks.slurm_vs_queue                 # 3 variants, 3 at once, train_classifier at tiny params
    python -m benchmarks.slurm_vs_queue --jobs 2 --variants square-8-red-7 clean-square-7

The grid is three variants of configs/grids/shortcut_benchmark.yaml at the tiny params of tests/tiny_params.yaml,
run to ``train_classifier`` (prepare, and one epoch on 600 images). Each way starts from its own fresh clone of this
project's last commit:

- **queue**: ``benchmarks.sweep``'s run (``dvc exp run --queue`` per experiment, ``dvc queue start -j JOBS``,
  waiting until all have ended); the experiments are then in the clone;
- **slurm**: ``benchmarks.slurm``'s submit, wait and collect on a single-node Slurm started here with JOBS CPUs
  (one per task): each task clones the shared git repository, runs ``dvc exp run``, pushes its outputs and its
  experiment; collect pulls them into the clone.

Both poll every 2 s. The figure is the wall time from the first command until every experiment is listed by
``dvc exp show`` in the clone; the ratio is slurm / queue, same grid, same run, one after the other (the queue
first, or Slurm with ``--slurm-first``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.experiments import REPO, read_grid
from benchmarks.single_node_slurm import SingleNodeSlurm, missing_binaries

GRID = Path("configs") / "grids" / "shortcut_benchmark.yaml"
TINY_PARAMS = Path("tests") / "tiny_params.yaml"
VARIANTS = ("square-8-red-7", "text-5-white-0", "clean-square-7")


def write_tiny_grid(path: Path, data_root: Path, project: Path = REPO, variants: tuple[str, ...] = VARIANTS,
                    stages: tuple[str, ...] = ("train_classifier",)) -> Path:
    """A grid file at ``path``: ``variants`` of ``project``'s benchmark grid, one size ``tiny`` (seed 0, its tiny
    params, raw data read from ``data_root``), run to ``stages``. Read from the project that runs it (a clone of
    the last commit), so that the grid and the code that checks it come from the same commit."""
    grid = yaml.safe_load((project / GRID).read_text())
    tiny = yaml.safe_load((project / TINY_PARAMS).read_text())
    by_name = {entry["name"]: entry for entry in grid["variants"]}
    unknown = [name for name in variants if name not in by_name]
    if unknown:
        raise ValueError(f"{project / GRID}: no variants {unknown}")
    params = {**tiny, "data": {**tiny["data"], "root": str(Path(data_root).resolve())}}
    path.write_text(yaml.safe_dump({
        "dataset": grid["dataset"], "stages": list(stages), "shortcut_defaults": grid.get("shortcut_defaults") or {},
        "sizes": {"tiny": {"seeds": [0], "params": params}},
        "variants": [by_name[name] for name in variants]}, sort_keys=False))
    return path


def fresh_clone(where: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(where)], check=True)
    return where


def time_queue(experiments: list, jobs: int, clone: Path) -> float:
    """Seconds for benchmarks.sweep's run of ``experiments`` through DVC's queue in ``clone``."""
    from benchmarks import sweep

    started = time.monotonic()
    sweep.run(experiments, jobs, poll_seconds=2, cwd=clone)
    return time.monotonic() - started


def time_slurm(experiments: list, jobs: int, clone: Path, tmp: Path) -> float:
    """Seconds from benchmarks.slurm's submit to its collect into ``clone``, on a single-node Slurm of ``jobs``
    CPUs (started before the clock starts, as a cluster's is)."""
    from benchmarks import slurm

    with SingleNodeSlurm(tmp / "cluster", cpus=jobs, memory_mb=2000 * jobs) as cluster:
        cluster.activate()
        shared = slurm.Shared.under(tmp / "shared")
        resources = slurm.Resources(time="00:30:00", mem="1500M", cpus_per_task=1)
        started = time.monotonic()
        slurm.submit(experiments, resources, shared, clone, workdir=str(tmp / "scratch"))
        slurm.wait(experiments, shared, clone, poll_seconds=2)
        slurm.collect(experiments, shared, clone)
        return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    from benchmarks.sweep import finished_experiments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3, help="experiments at once (queue workers, Slurm node CPUs)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--slurm-first", action="store_true", help="run the Slurm way first (default: the queue)")
    args = parser.parse_args(argv)
    if missing_binaries():
        print(f"slurm_vs_queue: missing {', '.join(missing_binaries())}: apt-get install slurm-wlm munge",
              file=sys.stderr)
        return 2
    committed = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["root"]
    data_root = (REPO / committed).resolve()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seconds, done, load = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="slurm-vs-queue-") as tmp:
        tmp = Path(tmp)
        clones = {way: fresh_clone(tmp / way) for way in ("queue", "slurm")}
        grid = write_tiny_grid(tmp / "grid.yaml", data_root, clones["queue"], tuple(args.variants))
        experiments = read_grid(grid).experiments("tiny")
        stages = read_grid(grid).stages
        names = {e.name for e in experiments}
        for way in ("slurm", "queue") if args.slurm_first else ("queue", "slurm"):
            clone = clones[way]
            load[way] = os.getloadavg()[0]
            seconds[way] = (time_slurm(experiments, args.jobs, clone, tmp) if way == "slurm"
                            else time_queue(experiments, args.jobs, clone))
            done[way] = names & set(finished_experiments(clone))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"grid: {len(names)} experiments ({', '.join(sorted(names))}) to {', '.join(stages)}, tiny params, "
          f"{args.jobs} at once; commit {commit}, {os.cpu_count()} CPUs")
    print(f"queue (dvc queue start -j {args.jobs}):          {seconds['queue']:7.1f} s  ({len(done['queue'])} done; "
          f"load {load['queue']:.1f} at its start)")
    print(f"slurm (sbatch --array, submit..collect): {seconds['slurm']:7.1f} s  ({len(done['slurm'])} done; "
          f"load {load['slurm']:.1f} at its start)")
    print(f"ratio slurm / queue: {seconds['slurm'] / seconds['queue']:.2f}")
    return 0 if done["queue"] == names and done["slurm"] == names else 1


if __name__ == "__main__":
    raise SystemExit(main())
