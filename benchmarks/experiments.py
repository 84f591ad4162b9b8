"""Lists of experiments: named sets of params overrides and DVC targets, each run as one DVC experiment.

One list feeds every way of running it: DVC's own queue on one machine (:mod:`benchmarks.sweep`), a Slurm job
array across machines (:mod:`benchmarks.slurm`), and the aggregations that read the experiments back
(:mod:`benchmarks.shortcut_benchmark`). A list comes from

- a **grid file** (``configs/grids/shortcut_benchmark.yaml``): variants x seeds, each variant a set of planted
  shortcuts on one dataset, with the overrides of a named size (``cpu``, ``gpu``) applied to all;
- a **sets file**: one experiment per line, ``name: key=value key=value ...`` (values in YAML), for any sweep of
  ``dvc exp run -S`` settings; lines starting with ``#`` are comments;
- the **seed study**: the committed params at several seeds;
- a **config file** (``configs/laptop.yaml``): nested params overrides and a ``remove`` list of params keys the run
  goes without; ``python -m benchmarks.experiments CONFIG`` prints its ``dvc exp run`` arguments, one per line
  (laptop.sh runs them).

An :class:`Experiment`'s overrides are dotted params keys with plain values; :meth:`Experiment.set_args` spells
them in the override grammar ``dvc exp run -S`` reads (Hydra's: lists ``[a,b]``, mappings ``{k:v}``, quoted
strings), so that a list of shortcuts replaces the committed one whole.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.reproducibility import flatten, merged

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")   # also a valid git ref component and a Slurm-safe word


def repo_relative(path: Path) -> str:
    """``path`` as a result file records it: relative to the repository when inside it, else as given."""
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment: its name, the params it overrides (dotted keys), the DVC targets it runs and the params
    keys it removes (``-S ~key``: a dataset the run goes without)."""

    name: str
    overrides: dict[str, Any]
    targets: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False)   # what the list says of it (spec, seed)
    removed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"experiment name {self.name!r}: use lower-case letters, digits and '-', starting with a "
                             f"letter or digit (it names a git ref and a Slurm task)")

    def set_args(self) -> list[str]:
        """``-S key=value`` arguments for ``dvc exp run``, one per override."""
        args = []
        for key in self.removed:
            args += ["-S", f"~{key}"]
        for key, value in self.overrides.items():
            args += ["-S", f"{key}={override_value(value)}"]
        return args

    def applied_to(self, params: dict) -> dict:
        """``params`` as ``dvc exp run`` writes them for this experiment: each override merged in at its dotted key
        (a mapping merged, anything else replaced), each removed key deleted. ``params`` itself is left alone."""
        params = copy.deepcopy(params)
        for key, value in self.overrides.items():
            parent, last = dotted_parent(params, key)
            old = parent.get(last)
            parent[last] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        for key in self.removed:
            parent, last = dotted_parent(params, key)
            del parent[last]
        return params

    def run_args(self) -> list[str]:
        """The arguments of ``dvc exp run`` after the command: name, overrides, targets."""
        return ["-n", self.name, *self.set_args(), *self.targets]


def dotted_parent(params: dict, key: str) -> tuple[dict, str]:
    """(the mapping that holds dotted ``key``'s last part, that part); missing levels are made, as DVC makes them."""
    *parents, last = key.split(".")
    for part in parents:
        params = params.setdefault(part, {})
    return params, last


def override_value(value: Any) -> str:
    """``value`` in the override grammar of ``dvc exp run -S``: JSON-like, keys bare, strings double-quoted."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# Grid files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A grid file read and checked: the dataset whose shortcuts each variant replaces, the stages to run, the
    named sizes (each its seeds and its params overrides), the development variants (reported apart) and the
    variants themselves."""

    path: Path
    dataset: str
    stages: tuple[str, ...]
    sizes: dict[str, dict]
    shortcut_defaults: dict
    variants: dict[str, list[dict]]
    development: tuple[str, ...]
    raw: dict

    def experiments(self, size: str, names: list[str] | None = None) -> list[Experiment]:
        """Every variant at every seed (``<variant>-s<seed>``), at ``size``; ``names`` limits them (variant or
        experiment names)."""
        if size not in self.sizes:
            raise ValueError(f"{self.path}: no size {size!r}; sizes: {', '.join(self.sizes)}")
        common = flatten(self.sizes[size].get("params") or {})
        targets = tuple(f"{stage}@{self.dataset}" for stage in self.stages)
        chosen = []
        for variant, shortcuts in self.variants.items():
            for seed in self.sizes[size]["seeds"]:
                name = f"{variant}-s{seed}"
                if names and variant not in names and name not in names:
                    continue
                overrides = {**common, "seed": seed, f"datasets.{self.dataset}.shortcuts": shortcuts}
                chosen.append(Experiment(name, overrides, targets,
                                         {"variant": variant, "seed": seed, "shortcuts": shortcuts, "size": size,
                                          "development": variant in self.development}))
        if names and not chosen:
            raise ValueError(f"{self.path}: none of {', '.join(names)} is a variant or experiment of this grid")
        return chosen


def read_grid(path: str | Path) -> Grid:
    """Read a grid file (see configs/grids/shortcut_benchmark.yaml); every variant's shortcuts get the file's
    ``shortcut_defaults`` for the fields they leave out. A variant with no shortcuts, or with ``fraction: 0``
    everywhere, is a clean variant (nothing planted)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    where = str(path)
    for key in ("dataset", "stages", "sizes", "variants"):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r}")
    defaults = raw.get("shortcut_defaults") or {}
    variants: dict[str, list[dict]] = {}
    for i, entry in enumerate(raw["variants"]):
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in variants:
            raise ValueError(f"{where}: variants[{i}].name = {name!r}: a new name of lower-case letters, digits and '-'")
        unknown = set(entry) - {"name", "shortcuts", "note"}
        if unknown:
            raise ValueError(f"{where}: variants[{i}] ({name}) has unknown keys {sorted(unknown)}; allowed: name, "
                             f"shortcuts, note")
        variants[name] = [{**defaults, **shortcut} for shortcut in entry.get("shortcuts") or []]
    for size, spec in raw["sizes"].items():
        if not isinstance(spec, dict) or not spec.get("seeds") or set(spec) - {"seeds", "params"}:
            raise ValueError(f"{where}: sizes.{size} must hold seeds (a non-empty list) and params (overrides)")
    development = tuple(raw.get("development") or ())
    missing = [name for name in development if name not in variants]
    if missing:
        raise ValueError(f"{where}: development names {missing}, which are not variants")
    return Grid(path, raw["dataset"], tuple(raw["stages"]), dict(raw["sizes"]), defaults, variants, development, raw)


def is_clean(shortcuts: list[dict]) -> bool:
    """Nothing planted: no shortcut, or every one on no training image."""
    return all(float(s.get("fraction", 1.0)) == 0.0 for s in shortcuts)


# --------------------------------------------------------------------------------------------
# Sets files and the seed study
# --------------------------------------------------------------------------------------------
def read_sets(path: str | Path, targets: tuple[str, ...] = ()) -> list[Experiment]:
    """One experiment per line of ``path``: ``name: key=value key=value ...`` (YAML values, no spaces inside)."""
    experiments = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        if not colon:
            raise ValueError(f"{path}:{number}: expected 'name: key=value ...', got {line!r}")
        overrides = {}
        for assignment in rest.split():
            key, equals, value = assignment.partition("=")
            if not equals or not key:
                raise ValueError(f"{path}:{number}: {assignment!r} is not key=value")
            overrides[key] = yaml.safe_load(value)
        experiments.append(Experiment(name.strip(), overrides, targets))
    return experiments


def read_config(path: str | Path, name: str | None = None, targets: tuple[str, ...] = ()) -> Experiment:
    """A config file (``configs/*.yaml``: params overrides as nested YAML, and a ``remove`` list of dotted params
    keys the run goes without) as one experiment; named after the file (lower-cased, other characters as '-') unless
    ``name`` is given."""
    path = Path(path)
    config = yaml.safe_load(path.read_text()) or {}
    removed = config.pop("remove", None) or []
    if not isinstance(removed, list) or not all(isinstance(key, str) for key in removed):
        raise ValueError(f"{path}: remove must be a list of dotted params keys, got {removed!r}")
    name = name or re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "config"
    return Experiment(name, flatten(config), targets, removed=tuple(removed))


def seed_study(seeds: list[int], dataset: str = "clever_hans") -> list[Experiment]:
    """The committed params at each seed: the classifier's reliance on the planted shortcut, seed by seed."""
    return [Experiment(f"seed-{seed}", {"seed": seed}, (f"train_classifier@{dataset}",)) for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a config file's `dvc exp run` arguments, one per line.")
    parser.add_argument("config", type=Path, help="a file of params overrides, such as configs/laptop.yaml")
    args = parser.parse_args(argv)
    try:
        experiment = read_config(args.config)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"experiments: {error}", file=sys.stderr)
        return 2
    print("\n".join(experiment.set_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
