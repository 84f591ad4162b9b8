"""The layout rules of the code: a library anyone can call, and thin stages around it.

- ``pipeline/stages/``: one module per DVC stage, at most ``MAX_STAGE_LINES`` lines; stages never
  import each other (they meet through dvc.yaml's deps and outs).
- The library (``LIBRARY_PACKAGES``) takes tensors, modules and option dataclasses of its own: it
  never imports a stage or the stage-side modules that know ``params.yaml`` and the output layout.
- Package ``__init__.py`` files hold at most a docstring, so importing one module of a package runs
  nothing else (and dvc.yaml's deps, which list modules, stay complete).
"""
import ast

import pytest

from tests.conftest import REPO

PIPELINE = REPO / "pipeline"
LIBRARY_PACKAGES = ("data", "models", "attribution", "counterfactuals", "evaluation", "report")
STAGE_SIDE = ("pipeline.stages", "pipeline.config", "pipeline.paths", "pipeline.runtime", "pipeline.prepared")
MAX_STAGE_LINES = 200


def modules_under(package: str) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (PIPELINE / package).rglob("*.py"))


def imports_of(relative_path: str) -> set[str]:
    """Every module named by an import anywhere in the file, including ``from a import b`` as ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse((REPO / relative_path).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def reaches(imported: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))


LIBRARY = [m for package in LIBRARY_PACKAGES if (PIPELINE / package).is_dir() for m in modules_under(package)]
STAGES = [m for m in modules_under("stages") if not m.endswith("__init__.py")]


def test_the_layout_is_there():
    assert len(STAGES) >= 15 and len(LIBRARY) >= 20


@pytest.mark.parametrize("module", LIBRARY)
def test_library_modules_never_import_stages_config_or_paths(module):
    assert reaches(imports_of(module), STAGE_SIDE) == []


@pytest.mark.parametrize("module", STAGES)
def test_stage_modules_are_thin_and_import_no_other_stage(module):
    lines = len((REPO / module).read_text().splitlines())
    assert lines <= MAX_STAGE_LINES, f"{module}: {lines} lines; move library logic out of the stage"
    assert reaches(imports_of(module), ("pipeline.stages",)) == []


@pytest.mark.parametrize("init", sorted(str(p.relative_to(REPO)) for p in PIPELINE.rglob("__init__.py")))
def test_package_init_files_run_nothing(init):
    body = ast.parse((REPO / init).read_text()).body
    assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body), init


def test_the_rules_catch_a_violation():
    assert reaches({"pipeline.config", "numpy"}, STAGE_SIDE) == ["pipeline.config"]
    assert reaches({"pipeline.configuration"}, STAGE_SIDE) == []
    assert reaches({"pipeline.stages.explain.main"}, ("pipeline.stages",)) == ["pipeline.stages.explain.main"]
