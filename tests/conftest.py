from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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
