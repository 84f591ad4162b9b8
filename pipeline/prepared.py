"""Prepared splits of a dataset, as prepare@<dataset> wrote them, read back for the other stages."""
from __future__ import annotations

import torch

from pipeline import paths
from pipeline.data.known_answer import KnownAnswer, known_answer_from_meta
from pipeline.storage import InputError, load_arrays, read_json


def load_prepared(dataset: str, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All arrays of a prepared split as tensors on ``device`` (images stay uint8)."""
    arrays = load_arrays(paths.prepared_dir(dataset) / f"{split}.npz", made_by=f"prepare@{dataset}")
    return {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}


def load_meta(dataset: str) -> dict:
    return read_json(paths.prepared_dir(dataset) / "meta.json", made_by=f"prepare@{dataset}")


def load_known_answer(dataset: str) -> KnownAnswer:
    """The dataset's known answer, as prepare@<dataset> recorded it (planted shortcuts, a colour rule, or unknown)."""
    meta = load_meta(dataset)
    try:
        return known_answer_from_meta(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{paths.prepared_dir(dataset) / 'meta.json'} records no readable known answer ({err}); "
                         f"re-run `dvc repro prepare@{dataset}`") from err
