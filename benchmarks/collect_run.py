"""Helpers of ``benchmarks/gpu_run.sh``: copy the tree, merge params overrides, collect a run's results.

    python -m benchmarks.collect_run copy-tree SRC DST          # the code without outputs, data or environments
    python -m benchmarks.collect_run merge PARAMS OVERRIDES     # deep-merge a partial params tree into PARAMS
    python -m benchmarks.collect_run collect WORK OUT --commit C --exit-code N --wall-seconds S

``collect`` writes into OUT: ``run.tar.gz`` (metrics/, dvc.lock, params.yaml, report/ and the small files
under plots/; no arrays, no checkpoints, kept under a size budget), ``timing.json`` and ``summary.txt``.
It works on a failed run too: whatever the stages wrote is collected and the summary names the stages
that wrote no timing file. Only the standard library and PyYAML: it runs before and after the pipeline,
in whatever Python the machine has.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
import zlib
from pathlib import Path

import yaml

from benchmarks.reproducibility import flatten, merged  # the same merge the tiny end-to-end run uses

# What the tarball holds: the run's small outputs (each declared in dvc.yaml: tests/test_gpu_run.py checks
# it) and the two files that say what ran.
COLLECTED_DIRS = ("metrics", "report", "plots")
RUN_FILES = ("dvc.lock", "params.yaml")
TIMING = "metrics/timing.json"           # written by the report stage from every stage's timing file
STAGE_TIMING_GLOB = "metrics/*/timing/*.json"
# Arrays and checkpoints are the big outputs; they live under data/ today, and are kept out of the tarball
# should a stage ever write one under plots/.
EXCLUDED_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".ckpt", ".pkl")
TEXT_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".yaml", ".lock")
DEFAULT_BUDGET_MIB = 15.0                # the results channel takes files of at most 16 MiB
LOG_LIMIT_MIB = 15.0

# Not copied when the tree arrives without .git: environments, data and outputs of earlier runs.
COPY_EXCLUDED_TOP = {".git", ".venv", ".whl", ".gpu-data", "data", "plots", "report", "dvc_plots", ".pytest_cache"}
COPY_EXCLUDED_ANYWHERE = {"__pycache__"}
COPY_EXCLUDED_DVC = {"cache", "tmp", "config.local"}   # .dvc/: local cache and state


# ----------------------------------------------------------------------------------------------------------
# copy-tree and merge (before the run)
# ----------------------------------------------------------------------------------------------------------
def copy_tree(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` without environments, data, earlier outputs (metrics/<D>/ folders) or caches.

    Returns the top-level names left out, for the log. Files directly in metrics/ (seed_study.json) are
    committed results and stay.
    """
    left_out = []

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).resolve().relative_to(src.resolve())
        skip = {n for n in names if n in COPY_EXCLUDED_ANYWHERE}
        if rel == Path("."):
            skip |= {n for n in names if n in COPY_EXCLUDED_TOP}
            left_out.extend(sorted(n for n in names if n in COPY_EXCLUDED_TOP))
        elif rel == Path("metrics"):
            skip |= {n for n in names if (Path(folder) / n).is_dir()}
        elif rel == Path(".dvc"):
            skip |= {n for n in names if n in COPY_EXCLUDED_DVC}
        return skip

    shutil.copytree(src, dst, ignore=ignore, symlinks=True)
    return left_out


def merge_params(params_path: Path, overrides_path: Path) -> dict:
    """Deep-merge the partial params tree in ``overrides_path`` into ``params_path`` (rewritten in place)."""
    overrides = yaml.safe_load(overrides_path.read_text())
    if not isinstance(overrides, dict):
        raise SystemExit(f"gpu_run: {overrides_path} must hold a params tree (a YAML mapping), got {type(overrides).__name__}")
    params = merged(yaml.safe_load(params_path.read_text()), overrides)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


# ----------------------------------------------------------------------------------------------------------
# collect (after the run)
# ----------------------------------------------------------------------------------------------------------
def matrix_items(work: Path, stage: dict) -> list:
    """The datasets a stage's matrix runs over: ``${datasets}`` is every name under ``datasets`` in params.yaml
    (as DVC expands it); a stage without a matrix runs once (``[None]``)."""
    items = stage.get("matrix", {}).get("dataset", [None])
    if isinstance(items, str) and items.startswith("${") and items.endswith("}"):
        node = yaml.safe_load((work / "params.yaml").read_text())
        for key in items[2:-1].split("."):
            node = node[key]
        items = list(node)
    return items


def expand(items: list, entries: list) -> list[str]:
    """The paths of a stage's outs or metrics entries, matrix expanded (${item.dataset} filled in for each item)."""
    names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return [name.replace("${item.dataset}", item) if item else name for name in names for item in items]


def declared_outputs(work: Path) -> list[str]:
    """Every output, metrics and plots file or folder dvc.yaml declares, matrix expanded."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    return [path for stage in stages.values() for key in ("outs", "metrics", "plots")
            for path in expand(matrix_items(work, stage), stage.get(key, []))]


def timed_stages(work: Path) -> list[str]:
    """The stages (name@item) that declare a timing file: each writes one when it finishes."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    names = []
    for name, stage in stages.items():
        items = matrix_items(work, stage)
        timed = [p for p in expand(items, stage.get("outs", [])) if Path(p).match(STAGE_TIMING_GLOB)]
        names += [f"{name}@{item}" if item else name for item in items] if timed else []
    return names


def declared_metrics(work: Path) -> list[str]:
    """The metrics files dvc.yaml declares (what `dvc metrics show` lists), matrix expanded."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    return [path for stage in stages.values() for path in expand(matrix_items(work, stage), stage.get("metrics", []))]


def stage_timing(work: Path) -> dict:
    """metrics/timing.json when the report stage wrote it, else the same merge of every stage's timing file."""
    path = work / TIMING
    if path.exists():
        return json.loads(path.read_text())
    stages, devices = {}, set()
    for record_path in sorted(work.glob(STAGE_TIMING_GLOB)):
        record = json.loads(record_path.read_text())
        devices.add(record.get("device", "unknown"))
        stages[record["stage"]] = {k: record.get(k) for k in ("seconds", "images", "images_per_second")}
    return {"device": ", ".join(sorted(devices)) or "unknown",
            "total_seconds": sum(s["seconds"] or 0 for s in stages.values()), "stages": stages,
            "note": f"{TIMING} was not written (the report stage did not run); merged from {STAGE_TIMING_GLOB}"}


def candidates(work: Path) -> list[tuple[int, str]]:
    """(priority, relative path) of every file the tarball may hold; lower priority numbers go in first."""
    found = []
    for name in RUN_FILES:
        if (work / name).is_file():
            found.append((0, name))
    for folder in COLLECTED_DIRS:
        for path in sorted((work / folder).rglob("*")) if (work / folder).is_dir() else []:
            if not path.is_file() or path.suffix in EXCLUDED_SUFFIXES:
                continue
            rel = path.relative_to(work).as_posix()
            if folder == "metrics":
                found.append((0, rel))
            elif folder == "report":
                found.append((1, rel))
            else:   # plots: numbers before pictures
                found.append((2 if path.suffix in TEXT_SUFFIXES else 3, rel))
    return sorted(found)


def compressed_size(data: bytes) -> int:
    """About what ``data`` adds to a .tar.gz: its gzip size plus a tar header."""
    return len(zlib.compress(data, 6)) + 512


def pack(work: Path, tarball: Path, budget_bytes: int) -> tuple[list[str], list[tuple[str, int]]]:
    """Write ``tarball`` from ``work``; files that would take it past ``budget_bytes`` are left out.

    Returns (packed paths, [(left-out path, its size)]). A MANIFEST.txt inside lists both.
    """
    packed, left_out, used = [], [], 0
    chosen = []
    for _, rel in candidates(work):
        data = (work / rel).read_bytes()
        size = compressed_size(data)
        if used + size > budget_bytes:
            left_out.append((rel, len(data)))
            continue
        used += size
        chosen.append((rel, data))
        packed.append(rel)
    manifest = [f"{len(packed)} files packed"] + packed
    if left_out:
        manifest += ["", f"{len(left_out)} files left out (size budget {budget_bytes / 2**20:.1f} MiB):"]
        manifest += [f"{rel}  {size} bytes" for rel, size in left_out]
    with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
        for rel, data in chosen + [("MANIFEST.txt", ("\n".join(manifest) + "\n").encode())]:
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return packed, left_out


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value)


def summary(work: Path, timing: dict, commit: str, exit_code: int, wall_seconds: float, params_note: str) -> str:
    """The run in a page: what ran, where, how long each stage took, and the headline metrics."""
    stages = timing.get("stages", {})
    timed = timed_stages(work)
    lines = [
        f"commit: {commit}",
        f"params: {params_note}",
        f"dvc repro exit code: {exit_code}",
        f"device: {timing.get('device', 'unknown')}",
        f"total wall seconds (dvc repro): {wall_seconds:.1f}",
        f"sum of stage seconds: {sum(s.get('seconds') or 0 for s in stages.values()):.1f} "
        f"({len(stages)} of the {len(timed)} stages that write a timing file)",
    ]
    if "note" in timing:
        lines.append(f"note: {timing['note']}")
    missing = [name for name in timed if name not in stages]
    if missing:
        lines.append(f"stages without a timing file (not run or failed): {', '.join(missing)}")
    lines += ["", "per-stage seconds (longest first):"]
    width = max((len(name) for name in stages), default=10)
    for name, record in sorted(stages.items(), key=lambda kv: -(kv[1].get("seconds") or 0)):
        lines.append(f"  {name:{width}s} {record.get('seconds') or 0:9.1f}")
    lines += ["", "headline metrics (the metrics files dvc.yaml declares):"]
    for rel in declared_metrics(work):
        path = work / rel
        if not path.exists():
            lines.append(f"  {rel}: missing")
            continue
        for key, value in flatten(json.loads(path.read_text())).items():
            lines.append(f"  {rel.removeprefix('metrics/')}:{key} = {format_value(value)}")
    return "\n".join(lines) + "\n"


def limit_log(path: Path, limit_bytes: int) -> bool:
    """Cut a log longer than ``limit_bytes`` to its head and tail, with a line saying so. True if cut."""
    size = path.stat().st_size
    if size <= limit_bytes:
        return False
    head, tail = limit_bytes // 8, limit_bytes - limit_bytes // 8 - 256
    with path.open("rb") as f:
        first = f.read(head)
        f.seek(size - tail)
        last = f.read()
    marker = f"\n[gpu_run: {size - head - tail} bytes of this log left out to stay under {limit_bytes} bytes]\n".encode()
    path.write_bytes(first + marker + last)
    return True


def collect(work: Path, out: Path, commit: str, exit_code: int, wall_seconds: float, params_note: str,
            budget_mib: float = DEFAULT_BUDGET_MIB) -> str:
    out.mkdir(parents=True, exist_ok=True)
    timing = stage_timing(work)
    if timing.get("stages"):
        (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    packed, left_out = pack(work, out / "run.tar.gz", int(budget_mib * 2**20))
    text = summary(work, timing, commit, exit_code, wall_seconds, params_note)
    text += (f"\nrun.tar.gz: {len(packed)} files, {(out / 'run.tar.gz').stat().st_size / 2**20:.2f} MiB"
             f" (metrics/, dvc.lock, params.yaml, report/, plots/ without arrays; MANIFEST.txt inside)\n")
    if left_out:
        text += f"left out of run.tar.gz to stay under {budget_mib} MiB: " + ", ".join(r for r, _ in left_out) + "\n"
    if not timing.get("stages"):
        text += "timing.json: not written, no stage wrote a timing file\n"
    log = out / "repro.log"
    if log.exists() and limit_log(log, int(LOG_LIMIT_MIB * 2**20)):
        text += f"repro.log was cut to {LOG_LIMIT_MIB} MiB (head and tail kept)\n"
    (out / "summary.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("copy-tree")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p = sub.add_parser("merge")
    p.add_argument("params", type=Path)
    p.add_argument("overrides", type=Path)
    p = sub.add_parser("collect")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--commit", required=True)
    p.add_argument("--exit-code", type=int, required=True)
    p.add_argument("--wall-seconds", type=float, required=True)
    p.add_argument("--params-note", default="params.yaml as committed")
    p.add_argument("--budget-mib", type=float, default=DEFAULT_BUDGET_MIB)
    args = parser.parse_args(argv)
    if args.command == "copy-tree":
        left_out = copy_tree(args.src, args.dst)
        print(f"gpu_run: copied {args.src} without {', '.join(left_out) or 'nothing'} (and metrics/*/, caches)")
    elif args.command == "merge":
        merge_params(args.params, args.overrides)
        print(f"gpu_run: merged {args.overrides} into {args.params}")
    else:
        print(collect(args.work, args.out, args.commit, args.exit_code, args.wall_seconds, args.params_note, args.budget_mib), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
