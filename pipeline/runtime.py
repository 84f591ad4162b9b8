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
import yaml

from pipeline import paths
from pipeline.config import ConfigError, DatasetParams, Params, fail, load_params
from pipeline.storage import InputError, write_json

PIPELINE_FILE = "dvc.yaml"   # where each stage declares the params it reads (and its deps and outs)


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


class UndeclaredParamError(ConfigError):
    """A stage read a params key that dvc.yaml does not declare for it: ``dvc repro`` would not re-run the stage
    when that key changes, and its outputs would silently stay those of the old value."""

    def __init__(self, stage: str, key: str):
        super().__init__(f"stage {stage} reads params key '{key}', which {PIPELINE_FILE} does not declare for it: add "
                         f"'{key}' (or its section) to the stage's params in {PIPELINE_FILE}, so that `dvc repro` "
                         f"re-runs it when the key changes")
        self.stage, self.key = stage, key


def declared_params(stage: str, dataset: str, pipeline_file: str | Path | None = None) -> frozenset[str]:
    """The params.yaml keys that ``pipeline_file``'s stage ``stage`` declares, its matrix item ``dataset`` filled in
    (``datasets.${item.dataset}`` -> ``datasets.clever_hans``); ``""`` stands for the whole file.

    ``pipeline_file``: by default the dvc.yaml of the working directory (DVC runs a stage there), else the one
    beside the ``pipeline`` package (a stage run by hand from elsewhere, as tests do).
    """
    path = Path(pipeline_file) if pipeline_file else _pipeline_file()
    try:
        spec = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the stages it declares ({err})") from err
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} declares no stage {stage!r}: each stage is run by DVC from there")
    keys = set()
    for entry in spec.get("params") or []:
        if isinstance(entry, str):
            keys.add(entry)
        elif isinstance(entry, dict):   # {params file: [keys]}: only params.yaml's keys are the ones a stage reads
            for file, listed in entry.items():
                if Path(file).name == "params.yaml":
                    keys.update(listed or [""])
    keys = {key.replace("${item.dataset}", dataset) for key in keys}
    unresolved = sorted(key for key in keys if "${" in key)
    if unresolved:
        raise ConfigError(f"{path}: stage {stage!r} declares params {unresolved}; only ${{item.dataset}} is filled in here")
    return frozenset(keys)


def declares(declared: frozenset[str], key: str) -> bool:
    """Whether ``declared`` covers the dotted ``key``: the key itself, a section above it, or the whole file."""
    return any(d == "" or key == d or key.startswith(d + ".") for d in declared)


def _pipeline_file() -> Path:
    here = Path(PIPELINE_FILE)
    return here if here.is_file() else Path(__file__).resolve().parents[1] / PIPELINE_FILE


class DeclaredParams:
    """Params as a stage may read them: only the keys its dvc.yaml entry declares (``declared``, dotted).

    Reading a declared key, or anything inside it, gives the value itself; reading a section of which only some
    keys are declared gives another view; reading anything else raises :class:`UndeclaredParamError`, so a run
    proves its stage's declarations. Attribute access (``params.explain.counterfactual``) and item access
    (``params.datasets["clever_hans"]``) both step one key down.
    """

    __slots__ = ("_value", "_declared", "_stage", "_where")

    def __init__(self, value, declared: frozenset[str], stage: str, where: str = ""):
        self._value, self._declared, self._stage, self._where = value, declared, stage, where

    def _read(self, key: str, get):
        dotted = f"{self._where}.{key}" if self._where else key
        if declares(self._declared, dotted):
            return get()
        if any(d.startswith(dotted + ".") for d in self._declared):
            return DeclaredParams(get(), self._declared, self._stage, dotted)
        raise UndeclaredParamError(self._stage, dotted)

    def __getattr__(self, name: str):
        if name.startswith("_"):   # Python's own protocols (copy, pickle, pytest) never reach the params
            raise AttributeError(name)
        return self._read(name, lambda: getattr(self._value, name))

    def __getitem__(self, key):
        return self._read(str(key), lambda: self._value[key])

    def _whole(self):
        raise UndeclaredParamError(self._stage, self._where or "(every key)")

    def __iter__(self):   # listing a section's keys reads all of it: datasets' names are datasets.<every name>
        self._whole()

    def __len__(self):
        self._whole()

    def __contains__(self, key):
        self._whole()

    def __repr__(self) -> str:
        return f"DeclaredParams({self._stage}: {', '.join(sorted(self._declared))})"


@dataclass
class StageContext:
    """What a stage runs with. ``params``: what dvc.yaml declares for it (a :class:`DeclaredParams` when run by
    :func:`stage`); ``device``: the CPU unless the stage declares ``device``."""

    dataset: str
    params: Params | DeclaredParams
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

    The stage sees params through :class:`DeclaredParams`: only what its dvc.yaml entry declares. A stage that
    declares no ``device`` runs on the CPU, and one that declares no ``deterministic`` leaves torch's
    deterministic kernels off: neither setting changes what it computes. Configuration and input errors end the
    process with a one-line message instead of a trace.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}")
    parser.add_argument("dataset", help="a dataset named under `datasets` in params.yaml, e.g. clever_hans")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        everything = load_params(args.params)   # validated as a whole, read as declared
        if args.dataset not in everything.datasets:
            fail("dataset", args.dataset, "a dataset named under `datasets` in params.yaml: " + ", ".join(everything.datasets))
        declared = declared_params(name, args.dataset)
        params = DeclaredParams(everything, declared, f"{name}@{args.dataset}")
        device = select_device(params.device) if declares(declared, "device") else torch.device("cpu")
        seed_everything(params.seed, declares(declared, "deterministic") and params.deterministic)
        ctx = StageContext(args.dataset, params, device, StageTimer(name, args.dataset, device))
        yield ctx
        record = ctx.timer.write()
        print(f"[{record['stage']}] done in {record['seconds']:.1f} s on {record['device']}", file=sys.stderr)
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
