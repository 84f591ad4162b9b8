"""A temporary copy of the repository that runs `dvc repro` as a user's clone would: the pipeline's code, dvc.yaml,
DVC's config and ignore files, a given params.yaml, committed to a fresh git repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

COPIED = ["pipeline", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore"]


def run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    """``args`` run in ``cwd`` with this interpreter's scripts first on PATH; its output, asserted to succeed."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return result.stdout if stdout_only else output


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def read(workspace: Path, *parts: str) -> dict:
    return json.loads(workspace.joinpath(*parts).read_text())


def repository_copy(path: Path, params: dict, message: str = "pipeline") -> Path:
    """``path`` (created) holding :data:`COPIED` from the repository and ``params`` as params.yaml, committed."""
    path.mkdir(parents=True)
    for name in COPIED:
        src, dst = REPO / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", message], path)
    return path
