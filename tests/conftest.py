from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: the end-to-end tier (real `dvc repro`, DVC queues, Slurm; minutes); "
                                       "`pytest -m 'not e2e'` is the quick run")
    config.addinivalue_line("markers", "slow: longer than a tier allows; skipped unless `pytest --run-slow`")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow (minutes of training): run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def find_mnist_root() -> Path | None:
    """A torchvision root with MNIST/raw on this machine: data/raw, $MNIST_ROOT, or ../shared/datasets."""
    candidates = [REPO / "data" / "raw", Path(os.environ.get("MNIST_ROOT", "/nonexistent")), REPO.parent / "shared" / "datasets"]
    for root in candidates:
        if (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return root.resolve()
    return None


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = find_mnist_root()
    if root is None:
        pytest.skip("no raw MNIST files on this machine (data/raw/MNIST/raw); run setup.sh or set MNIST_ROOT")
    return root


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, mapping by mapping (anything else is replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def repo_params(overrides: dict | None = None) -> dict:
    """params.yaml as committed, with ``overrides`` merged in: every key a stage reads is there (params.yaml is
    where defaults live), and a test changes only what it is about."""
    import yaml

    return merged(yaml.safe_load((REPO / "params.yaml").read_text()), overrides or {})


def params_with(overrides: dict | None = None):
    """:func:`repo_params` loaded and validated (``pipeline.config.Params``)."""
    from pipeline.config import Params, build

    return build(Params, repo_params(overrides))


def classifier_params(**changes):
    """params.yaml's ``classifier`` section with ``changes``: what ``models.training.train`` and ``evaluate`` read."""
    return params_with({"classifier": changes}).classifier
