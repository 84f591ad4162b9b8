"""Reading and writing stage outputs.

Every write goes to a temporary name beside the target and is renamed into place, so a crash
never leaves a half-written file that looks complete. Every read of a missing or corrupt input
raises :class:`InputError` naming the file and the stage that makes it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


class InputError(RuntimeError):
    """An input file is missing or unreadable."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits``; numpy/torch scalars made plain; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rounded(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, made_by: str = "the stage that writes it") -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing; run `dvc repro` for {made_by} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); re-run {made_by}") from err


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)


def load_arrays(path: str | Path, made_by: str = "the stage that writes it") -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing; run `dvc repro {made_by}` first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"{path} is corrupt ({err}); delete it and run `dvc repro {made_by}`") from err


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` atomically; the same content gives the same bytes in every process.

    torch names the archive inside the file after the file name it is given, and the temporary name
    holds the process id, so it is written through an open handle instead. Stable bytes keep DVC from
    re-running downstream stages when a model did not change.
    """
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(checkpoint, handle)


def read_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: the file is read as data and never runs code. A file torch cannot read
    so raises ValueError that names it and says why in plain words (torch's own text spans lines, carries terminal
    colour codes and advises loading the file unsafely); a missing one raises FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. on the pickle protocol of a file torch.save did not write
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        why = (f"holds a Python object ({found.group(1)}) besides tensors, which is not loaded: it would run code"
               if found else "is not a file that torch.save wrote, or it is cut short")
        raise ValueError(f"{path} {why}") from None


def load_checkpoint(path: str | Path, made_by: str = "the stage that writes it", map_location: Any = "cpu") -> dict:
    """Load a checkpoint as data (``weights_only=True``): a checkpoint never runs code."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing; run `dvc repro {made_by}` first")
    try:
        return read_torch_file(path, map_location)
    except ValueError as err:
        raise InputError(f"{err}; re-run `dvc repro {made_by}`") from None


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as tidy CSV (one row per point) for `dvc plots`."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
