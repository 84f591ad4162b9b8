"""What dvc.yaml declares that a stage writes, for one dataset: the stages' tests check their files against it."""
from __future__ import annotations

import yaml

from tests.conftest import REPO


def stage_outputs(stage: str, dataset: str, sections: tuple[str, ...] = ("outs", "metrics", "plots")) -> dict[str, dict]:
    """{path: its options in dvc.yaml (axes and template of a plot, cache, ...)} of ``stage``'s ``sections``, with
    ``${item.dataset}`` filled in."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    found = {}
    for section in sections:
        for entry in spec.get(section, []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            found[path.replace("${item.dataset}", dataset)] = options or {}
    return found
