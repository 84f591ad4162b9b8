"""What the report is built from: one dataset's metrics, details and pictures, and the sections of its page."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = [  # (stage folder under plots/<D>/, metrics file name or None, heading)
    ("prepare", None, "The data"),
    ("train_classifier", "classifier", "The classifier"),
    ("attribute", "attribution", "Attributions: what does it look at?"),
    ("architectures", "architectures", "Architectures compared: trained alike, do they learn and look alike?"),
    ("train_gan", "train_gan", "The counterfactual GAN"),
    ("counterfactuals", "counterfactuals", "Counterfactuals judged by the classifier"),
    ("explain", "explain", "Discriminative attribution: which small change flips the decision?"),
    ("discover", "discover", "Discovery: evidence that recurs for one class, found without the answer"),
    ("feature_viz", "feature_viz", "Activation maximisation"),
    ("dissect", "dissect", "Network dissection: which units segment a known concept?"),
    ("prototypes", "prototypes", "Prototypes and criticisms (MMD-critic)"),
    ("influence", "influence", "Influential training images (TracIn proponents)"),
    ("optimize_counterfactuals", "optimize_counterfactuals", "Optimisation-based counterfactuals"),
    ("spectra", "spectra", "Spectral detection of generated images"),
]


@dataclass
class DatasetRun:
    """One dataset's results as the report reads them: metrics, details and pictures per stage."""

    dataset: str                                             # its name under `datasets` in params.yaml
    kind: str                                                # colored_mnist | clever_hans | image_folder (none)
    metrics: dict[str, dict] = field(default_factory=dict)   # metrics file name -> headline figures
    details: dict[str, dict] = field(default_factory=dict)   # stage -> plots/<D>/<stage>/details.json
    pictures: dict[str, list[Path]] = field(default_factory=dict)  # stage -> PNG files
    more_pictures: dict[str, int] = field(default_factory=dict)    # stage -> PNGs left out of the page
    picture_dirs: dict[str, Path] = field(default_factory=dict)    # stage -> folder the pictures come from

    def metric(self, name: str) -> dict:
        return self.metrics.get(name) or {}

    def detail(self, stage: str) -> dict:
        return self.details.get(stage) or {}
