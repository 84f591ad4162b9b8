"""dvc.yaml stays true to the code: every stage declares the pipeline modules it runs and the params keys it
reads (no more, so that `dvc repro` re-runs exactly the stages a change concerns), and every param the code reads
is set in params.yaml (so code defaults never decide a run behind DVC's back)."""
import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
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


def code_deps(files: set[str]) -> set[str]:
    """The deps that declare ``files`` (pipeline modules), as dvc.yaml's header says: a library package as one folder
    where more than half of its modules are among them, else module by module; stage-side modules one by one."""
    deps, by_package = set(), {}
    for file in files:
        parts = Path(file).parts
        if len(parts) == 3 and parts[1] != "stages":
            by_package.setdefault(parts[1], set()).add(file)
        else:
            deps.add(file)
    for package, used in by_package.items():
        modules = [m for m in (PIPELINE / package).glob("*.py") if m.name != "__init__.py"]
        deps |= {f"pipeline/{package}"} if 2 * len(used) > len(modules) else used
    return deps


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_declares_the_pipeline_code_it_imports(name):
    """A change to a module a stage imports re-runs it; a package folder is declared where the stage imports most of
    it (a change to its other modules re-runs the stage too: the price of a short list)."""
    stage = STAGES[name]
    declared = {dep for dep in stage["deps"] if dep.startswith("pipeline/")}
    expected = code_deps(imported_modules(stage_module(stage)) - NOT_DECLARED)
    assert declared == expected, (f"{name}: deps should name {sorted(expected)}; "
                                  f"add {sorted(expected - declared)}, drop {sorted(declared - expected)}")


def test_a_package_is_one_dep_where_a_stage_imports_most_of_it():
    data = {f"pipeline/data/{m}.py" for m in ("colored_mnist", "known_answer", "regions", "shortcuts", "tensors")}
    assert code_deps(data | {"pipeline/scoring/chance.py", "pipeline/paths.py", "pipeline/stages/x.py"}) == {
        "pipeline/data", "pipeline/scoring/chance.py", "pipeline/paths.py", "pipeline/stages/x.py"}


DATASET = "<dataset>"   # the stage's own matrix item, in the keys below


def stage_module(stage: dict) -> str:
    return stage["cmd"].split("python -m ", 1)[1].split()[0]


def declared_keys(stage: dict) -> set[str]:
    return {key.replace("${item.dataset}", DATASET) for key in stage.get("params", []) if isinstance(key, str)}


def access_chain(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """``ctx.params.datasets[name].kind`` -> (``ctx``, ["params", "datasets", DATASET, "kind"]): a subscript by
    anything but a constant is by the stage's dataset (the one name a stage indexes params by)."""
    parts = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
        else:
            parts.append(str(node.slice.value) if isinstance(node.slice, ast.Constant) else DATASET)
        node = node.value
    return node, parts[::-1]


def params_read(module: str) -> set[str]:
    """The params keys a stage module reads, found in its code without running it (dotted, as dvc.yaml lists them)."""
    return params_read_in(module_file(module).read_text())


def params_read_in(code: str) -> set[str]:
    """The params keys ``code`` (a stage module's) reads.

    Read: what follows ``ctx.params`` (as far as the code goes in one expression: ``cfg = ctx.params.explain``
    reads all of ``explain``), what follows a name ``params`` (the helpers ``ctx.params`` is handed to) or a
    ``load_params(...)`` call; ``ctx.entry``/``ctx.kind`` read ``datasets.<dataset>``; ``ctx.device`` reads
    ``device`` and ``deterministic`` (how torch runs there); every stage run by ``runtime.stage`` reads ``seed``.
    ``ctx.params`` handed on whole, with no helper taking ``params`` to follow, reads everything (``""``).
    """
    tree = ast.parse(code)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    helpers_take_params = any(arg.arg == "params" for node in ast.walk(tree)
                              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for arg in node.args.args)
    runs_in_stage = any(isinstance(node, ast.ImportFrom) and node.module == "pipeline.runtime"
                        and any(a.name == "stage" for a in node.names) for node in ast.walk(tree))
    read = {"seed"} if runs_in_stage else set()
    for node in ast.walk(tree):
        parent = parents.get(node)
        if not isinstance(node, (ast.Attribute, ast.Subscript)) or (
                isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is node):
            continue   # only whole chains
        root, parts = access_chain(node)
        if isinstance(root, ast.Call) and getattr(root.func, "id", None) == "load_params":
            read.add(".".join(parts))
        elif isinstance(root, ast.Name) and root.id == "params":
            read.add(".".join(parts))
        elif isinstance(root, ast.Name) and root.id == "ctx" and parts:
            if parts[0] == "params" and (len(parts) > 1 or not helpers_take_params):
                read.add(".".join(parts[1:]))
            elif parts[0] in ("entry", "kind"):
                read.add(f"datasets.{DATASET}")
            elif parts[0] == "device":
                read |= {"device", "deterministic"}
            elif parts[0] in ("generator", "rng"):
                read.add("seed")
    return read


def covered(key: str, by: set[str]) -> bool:
    return any(d == key or key.startswith(d + ".") for d in by)


STAGES_RUN = [name for name, stage in STAGES.items() if stage_module(stage).startswith("pipeline.stages.")]


@pytest.mark.parametrize("name", STAGES_RUN)
def test_every_stage_declares_the_params_it_reads_and_no_more(name):
    """A key read but not declared: `dvc repro` keeps the stage's old outputs when it changes (a stale model).
    A key declared but not read: the stage re-runs for nothing. (``runtime.stage`` also refuses, at run time, a
    read that dvc.yaml does not declare; this finds it without running the stage.)"""
    stage = STAGES[name]
    read, declared = params_read(stage_module(stage)), declared_keys(stage)
    missing = sorted(key for key in read if not covered(key, declared))
    assert not missing, f"{name} reads {missing}: add them to its params in dvc.yaml"
    unread = sorted(d for d in declared if not any(covered(r, {d}) or covered(d, {r}) for r in read))
    assert not unread, f"{name} declares {unread} but does not read them: leave them out of its params in dvc.yaml"


def test_params_read_sees_what_a_stage_reads():
    """The reader above, on a constructed stage: every way a stage reaches params."""
    code = textwrap.dedent("""
        from pipeline.runtime import stage
        def helper(params, name):
            return params.data.root, params.datasets[name].kind
        def main():
            with stage("x") as ctx:
                cfg = ctx.params.explain
                helper(ctx.params, ctx.dataset)
                ctx.params.discover.counterfactual, ctx.entry.classifier, ctx.device
    """)
    assert params_read_in(code) == {"seed", "explain", "data.root", f"datasets.{DATASET}.kind", "discover.counterfactual",
                    f"datasets.{DATASET}", "device", "deterministic"}


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


@pytest.mark.e2e   # real `dvc repro` runs of prepare and train_classifier
def test_a_changed_dataset_entry_makes_its_classifier_stale_and_nothing_else_does(tmp_path):
    """The stale-model case: once a dataset's classifier is trained, naming a classifier of its own in the dataset's
    entry marks train_classifier@<dataset> changed for `dvc status` (so `dvc repro` re-runs it), where a change to
    a section it does not read (gan) leaves it up to date. A tiny image folder and one epoch, in a copy of the repository."""
    from tests.conftest import repo_params
    from tests.synthetic_images import write_image_folder

    work = tmp_path / "repo"
    for name in ("pipeline", "dvc.yaml", ".dvcignore", ".dvc/config", ".gitignore"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, work / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    images = write_image_folder(tmp_path / "images", n_train=8, n_test=4, size=28)
    params = repo_params({"device": "cpu", "classifier": {"epochs": 1, "width": 4, "batch_size": 8, "eval_batch_size": 16,
                                                          "n_example_images": 2, "mixed_precision": False}})
    params["datasets"] = {"mine": {"kind": "image_folder", "root": str(images), "image_size": 28}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)}:\n{(done.stdout + done.stderr)[-4000:]}"
        return done.stdout

    def stale() -> set[str]:
        return set(json.loads(run(sys.executable, "-m", "dvc", "status", "--json", "train_classifier@mine")))

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "a tiny pipeline")
    run(sys.executable, "-m", "dvc", "repro", "train_classifier@mine")
    params["gan"]["iterations"] += 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale() == set()   # not a section train_classifier reads
    params["datasets"]["mine"]["classifier"] = {"torchvision": "resnet18"}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train_classifier@mine" in stale()


def test_every_dataset_gets_its_plots_declared_per_stage():
    """Plots are declared in the stages (each file with its axes, the pictures as one folder, where paths.py puts
    them), so a dataset added to params.yaml gets them too; none is listed per dataset at the top level."""
    from pipeline import paths

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "plots" not in spec, "declare plots in their stage, with ${item.dataset}: a top-level one names one dataset"
    for name, stage in STAGES.items():
        if "matrix" not in stage:
            continue
        plots = {next(iter(p)) if isinstance(p, dict) else p: p for p in stage.get("plots", [])}
        assert paths.pictures_dir("${item.dataset}", name).as_posix() in plots, f"{name}: declare its pictures folder"
        for path, entry in plots.items():
            assert "${item.dataset}" in path, path
            options = entry[path] if isinstance(entry, dict) else {}
            assert options.get("cache") is False, f"{path}: plots are kept by git (cache: false)"


def test_no_declared_output_lies_inside_another():
    """DVC refuses overlapping outputs: a folder declared whole holds nothing declared on its own."""
    declared = [next(iter(o)) if isinstance(o, dict) else o for stage in STAGES.values()
                for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]
    assert len(declared) == len(set(declared))
    inside = [(a, b) for a in declared for b in declared if b.startswith(a.rstrip("/") + "/")]
    assert not inside, inside
