"""A temporary copy of the repository that runs `dvc repro` as a user's clone would: the pipeline's code, dvc.yaml,
DVC's config and ignore files, a given params.yaml, committed to a fresh git repository."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.test_pipeline_e2e import COPIED, run


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
