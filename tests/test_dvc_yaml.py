"""dvc.yaml stays true to the code: every stage declares the pipeline modules it runs, and every
param the code reads is set in params.yaml (so code defaults never decide a run behind DVC's back)."""
import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, load_params
from tests.conftest import REPO

PIPELINE = REPO / "pipeline"
# config.py only validates params.yaml and holds defaults that params.yaml overrides (checked below);
# declaring it would re-run the whole pipeline for every new param. What it imports (the library's option
# dataclasses it checks) is declared by the stages that use it.
NOT_DECLARED = {"pipeline/config.py", "pipeline/__init__.py"}


def module_file(dotted: str) -> Path | None:
    """``pipeline/a/b.py`` for module ``pipeline.a.b``; None for a package or a name that is no module."""
    path = REPO.joinpath(*dotted.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def imported_modules(module: str) -> set[str]:
    """``pipeline/**.py`` files that ``module`` imports, directly or through other pipeline modules
    (package ``__init__.py`` files are empty: the layout test checks it)."""
    seen, todo = set(), [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or str(path.relative_to(REPO)) in seen:
            continue
        seen.add(str(path.relative_to(REPO)))
        if str(path.relative_to(REPO)) in NOT_DECLARED:
            continue  # what config imports serves the validation of params, not the stage
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
                todo += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("pipeline.")]
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_declares_the_pipeline_modules_it_imports(name):
    stage = STAGES[name]
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    declared = {dep for dep in stage["deps"] if dep.startswith("pipeline/")}
    needed = imported_modules(module) - NOT_DECLARED
    assert needed <= declared, f"{name}: add to deps: {sorted(needed - declared)}"
    assert declared <= needed, f"{name}: declared but not imported: {sorted(declared - needed)}"


def test_params_yaml_sets_every_key_the_code_reads():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def not_read(cls, values):
        """Settings of a dataset entry that its kind and source do not read (``DatasetParams.unread``)."""
        return cls.unread(values) if hasattr(cls, "unread") else set()

    def missing(cls, values, where):
        hints = typing.get_type_hints(cls)
        skipped = not_read(cls, values)
        for f in dataclasses.fields(cls):
            dotted = f"{where}.{f.name}" if where else f.name
            hint, value = hints[f.name], values.get(f.name)
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            item = args[-1] if args else None
            if f.name in skipped or not f.init:
                continue
            if f.name not in values:
                yield dotted
            elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
                yield from missing(hint, value, dotted)
            elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(item):
                for name, entry in value.items():
                    yield from missing(item, entry, f"{dotted}.{name}")
            elif typing.get_origin(item) is list and isinstance(value, list):  # Optional[list[...]]
                yield from missing_in_list(typing.get_args(item)[0], value, dotted)
            elif dataclasses.is_dataclass(item) and isinstance(value, list):
                yield from missing_in_list(item, value, dotted)

    def missing_in_list(item, value, dotted):
        if dataclasses.is_dataclass(item):
            for i, entry in enumerate(value):
                yield from missing(item, entry, f"{dotted}[{i}]")

    load_params(REPO / "params.yaml")  # valid as a whole
    assert list(missing(Params, raw, "")) == []


def test_a_dataset_added_to_params_gets_every_stage(tmp_path):
    """The matrix takes its datasets from params.yaml: a third entry there is a third row of every stage."""
    import shutil
    import subprocess
    import sys

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"]["fashion_hans"] = dict(raw["datasets"]["clever_hans"], source="fashion-mnist")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(dvc + ["stage", "list", "--name-only"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    names = set(listed.split())
    for stage, definition in STAGES.items():
        expected = {f"{stage}@{d}" for d in raw["datasets"]} if "matrix" in definition else {stage}
        assert expected <= names, sorted(expected - names)
