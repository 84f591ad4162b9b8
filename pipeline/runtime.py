"""What every stage needs at run time: the dataset argument, the device, seeding, timing, the code it runs."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline import paths
from pipeline.config import ConfigError, DatasetParams, Params, fail, load_params
from pipeline.storage import InputError, write_json


def select_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a silent CPU run."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params: device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch, and switch torch's deterministic kernels on or off.

    Both ways are set, so a process that seeds twice gets the mode it asked for last.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def stage_seed(seed: int, stage: str, dataset: str) -> int:
    """A seed per (stage, dataset) derived from the global one, stable across runs and machines."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(f"{stage}/{dataset}".encode())) % (2**31 - 1)


@dataclass
class StageTimer:
    """Wall time of a stage and how many images it processed, written to ``metrics/<D>/timing``.

    ``details``: further figures that change from run to run without the results changing (a training
    loop's own seconds, iterations run and per second); they belong here, not in the metrics.
    """

    stage: str
    dataset: str
    device: torch.device
    images: int = 0
    started: float = field(default_factory=time.perf_counter)
    details: dict[str, float] = field(default_factory=dict)

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.started

    def write(self) -> dict:
        seconds = self.seconds()
        record = {
            "stage": f"{self.stage}@{self.dataset}",
            "device": device_name(self.device),
            "seconds": seconds,
            "images": int(self.images),
            "images_per_second": self.images / seconds if seconds > 0 else 0.0,
            **self.details,
        }
        write_json(paths.timing_path(self.dataset, self.stage), record)
        return record


@dataclass
class StageContext:
    dataset: str
    params: Params
    device: torch.device
    timer: StageTimer

    @property
    def entry(self) -> DatasetParams:
        """This dataset's entry of ``datasets`` in params.yaml: its kind, source and known answer."""
        return self.params.datasets[self.dataset]

    @property
    def kind(self) -> str:
        return self.entry.kind

    def generator(self, salt: str = "", device: torch.device | str | None = None) -> torch.Generator:
        """The seeded random stream ``salt`` of this stage, on the CPU unless ``device`` is given.

        Data order and sampling draw on the CPU and move the drawn indices to the device, so a CPU run
        and a GPU run see the same images in the same order; pass ``device`` only for noise that must be
        drawn where it is used (e.g. inside a CUDA graph).
        """
        return torch_generator(stage_seed(self.params.seed, self.timer.stage + salt, self.dataset), device or "cpu")

    def rng(self, salt: str = "") -> np.random.Generator:
        return np.random.default_rng(stage_seed(self.params.seed, self.timer.stage + salt, self.dataset))


def source_files(module: str, leave_out: tuple[str, ...] = ()) -> dict[str, Path]:
    """Source file of ``module`` and of every module of its package that it imports at import time, transitively.

    Found by reading the code (nothing is imported), so what a checkpoint depends on is derived rather than
    listed by hand. Imports inside functions are not followed: they serve that function alone (a figure, a
    logger). Modules named in ``leave_out`` are skipped with what only they import. Returns {module name: path}.
    """
    package = module.split(".")[0]
    root = Path(importlib.util.find_spec(package).origin).parent
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_path(root, name)
        if name in found or name in leave_out or path is None:
            continue
        found[name] = path
        todo += [m for m in _import_time_imports(path, name) if m.split(".")[0] == package]
    return dict(sorted(found.items()))


def _module_path(root: Path, name: str) -> Path | None:
    """``<root>/a/b.py`` or ``<root>/a/b/__init__.py`` for module ``<package>.a.b``; None if neither exists."""
    base = root.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _import_time_imports(path: Path, name: str) -> list[str]:
    """Modules that running ``path`` (module ``name``) imports, outside function bodies, with their parent
    packages; ``from a import b`` yields ``a`` and ``a.b`` (the latter only matters when ``b`` is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    modules = []
    todo = list(ast.parse(path.read_text(), filename=str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            modules += [base] + [f"{base}.{alias.name}" for alias in node.names]
        todo.extend(ast.iter_child_nodes(node))
    return [".".join(parts[:end]) for parts in (m.split(".") for m in modules) for end in range(1, len(parts) + 1)]


def open_live(directory):
    """A DVCLive logger writing under ``directory``; the stage's outputs are declared in dvc.yaml instead."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False)
    except SCMError as err:
        raise InputError(f"DVCLive cannot read the git repository ({err}); commit once (`git commit`) and re-run") from err


@contextlib.contextmanager
def stage(name: str, argv: list[str] | None = None) -> Iterator[StageContext]:
    """Parse ``<dataset>``, validate params, pick the device, seed, and time the stage.

    Configuration and input errors end the process with a one-line message instead of a trace.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}")
    parser.add_argument("dataset", help="a dataset named under `datasets` in params.yaml, e.g. clever_hans")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.dataset not in params.datasets:
            fail("dataset", args.dataset, "a dataset named under `datasets` in params.yaml: " + ", ".join(params.datasets))
        device = select_device(params.device)
        seed_everything(params.seed, params.deterministic)
        ctx = StageContext(args.dataset, params, device, StageTimer(name, args.dataset, device))
        yield ctx
        record = ctx.timer.write()
        print(f"[{record['stage']}] done in {record['seconds']:.1f} s on {record['device']}", file=sys.stderr)
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
