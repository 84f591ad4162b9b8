"""Where each stage reads and writes; the single source of the layout that dvc.yaml declares."""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")
METRICS = Path("metrics")
PLOTS = Path("plots")


def prepared_dir(dataset: str) -> Path:
    return DATA / "prepared" / dataset


def model_dir(dataset: str) -> Path:
    return DATA / "models" / dataset


def classifier_path(dataset: str) -> Path:
    return model_dir(dataset) / "classifier.pt"


def classifier_checkpoint_dir(dataset: str) -> Path:
    """The classifier after each epoch, ``epoch_<k>.pt`` with that epoch's mean learning rate (for influence@<dataset>)."""
    return model_dir(dataset) / "classifier_checkpoints"


def classifier_checkpoint_path(dataset: str, epoch: int) -> Path:
    return classifier_checkpoint_dir(dataset) / f"epoch_{epoch}.pt"


def gan_path(dataset: str) -> Path:
    """The trained translator (EMA weights) that counterfactuals@<dataset> loads."""
    return model_dir(dataset) / "gan.pt"


def gan_checkpoint_dir(dataset: str) -> Path:
    return model_dir(dataset) / "gan_checkpoints"


def metrics_path(dataset: str, name: str) -> Path:
    return METRICS / dataset / f"{name}.json"


def timing_path(dataset: str, stage: str) -> Path:
    return METRICS / dataset / "timing" / f"{stage}.json"


def plots_dir(dataset: str, stage: str) -> Path:
    """A stage's ``details.json`` and plot data: dvc.yaml declares each file, plot data with its axes."""
    return PLOTS / dataset / stage


def pictures_dir(dataset: str, stage: str) -> Path:
    """A stage's pictures (subfolders included), which dvc.yaml declares as one plots folder: apart from the plot
    data beside it, since DVC's outputs may not overlap."""
    return plots_dir(dataset, stage) / "pictures"


def counterfactuals_path(dataset: str) -> Path:
    return DATA / "counterfactuals" / dataset / "counterfactuals.npz"


def architectures_dir(dataset: str) -> Path:
    """The classifiers that architectures@<dataset> trains alike, one ``<architecture>.pt`` each."""
    return model_dir(dataset) / "architectures"
