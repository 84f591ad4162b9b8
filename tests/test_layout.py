"""The layout rules of the code: a library anyone can call, and thin stages around it.

- ``pipeline/stages/``: one module per DVC stage, at most ``MAX_STAGE_LINES`` lines; stages never
  import each other (they meet through dvc.yaml's deps and outs).
- The library (``LIBRARY_PACKAGES``) takes tensors, modules and option dataclasses of its own: it
  never imports a stage or the stage-side modules that know ``params.yaml`` and the output layout.
- The known answer (which class carries which shortcut where, or the colour rule) is one type,
  ``pipeline/data/known_answer.py``: no other module reads it from array keys, params entries or key strings,
  nor branches on a shortcut's kind (``KNOWS_THE_SHORTCUTS`` plant and validate them).
- Package ``__init__.py`` files hold at most a docstring, so importing one module of a package runs
  nothing else (and dvc.yaml's deps, which list modules, stay complete).
"""
import ast

import pytest

from tests.conftest import REPO

PIPELINE = REPO / "pipeline"
LIBRARY_PACKAGES = ("data", "models", "attribution", "counterfactuals", "evaluation", "scoring", "report")
STAGE_SIDE = ("pipeline.stages", "pipeline.config", "pipeline.schema", "pipeline.dataset_params", "pipeline.paths",
              "pipeline.runtime", "pipeline.prepared")
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


# --------------------------------------------------------------------------------------------
# One known answer
# --------------------------------------------------------------------------------------------
KNOWS_THE_SHORTCUTS = {"pipeline/data/known_answer.py", "pipeline/data/shortcuts.py", "pipeline/data/clever_hans.py",
                       "pipeline/dataset_params.py", "pipeline/stages/prepare.py"}
SHORTCUT_KINDS = {"square", "text", "watermark", "gradient"}
ANSWER_ARRAYS = {"shortcut_alpha", "shortcut_labels", "shortcut_images"}   # what prepare once wrote beside the images


def answer_lookups(source: str) -> list[str]:
    """Places in ``source`` that find the known answer behind the known-answer type's back: a comparison with a
    shortcut kind's name, a subscript or ``in`` test with an answer array's key, ``meta["shortcuts"]``, or the
    shortcuts or colormaps of a params entry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            names = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
            if names & (SHORTCUT_KINDS | ANSWER_ARRAYS):
                found.append(f"line {node.lineno}: compares with {sorted(names & (SHORTCUT_KINDS | ANSWER_ARRAYS))}")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and (
                node.slice.value in ANSWER_ARRAYS or (node.slice.value == "shortcuts" and "meta" in ast.unparse(node.value))):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("shortcuts", "colormaps") and any(
                word in ast.unparse(node.value) for word in ("entry", "datasets", "params")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", sorted(str(p.relative_to(REPO)) for p in PIPELINE.rglob("*.py")
                                          if str(p.relative_to(REPO)) not in KNOWS_THE_SHORTCUTS))
def test_only_the_known_answer_type_knows_which_class_carries_what_where(module):
    assert answer_lookups((REPO / module).read_text()) == [], f"{module}: use pipeline.data.known_answer instead"


def test_the_known_answer_rule_catches_a_lookup():
    assert answer_lookups('if s.kind == "square": pass') and answer_lookups('if "shortcut_alpha" in test: pass')
    assert answer_lookups('x = meta["shortcuts"]') and answer_lookups("for s in ctx.entry.shortcuts: pass")
    assert answer_lookups("for s in answer.shortcuts: pass") == [] and answer_lookups('if kind == "dense": pass') == []
