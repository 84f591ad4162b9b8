import pytest
import torch

from pipeline.scores import accuracy, confusion_matrix, per_class_accuracy, shortcut_reliance


def test_confusion_and_per_class_accuracy():
    actual = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    confusion = confusion_matrix(actual, predicted, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert per_class_accuracy(confusion) == {"0": 0.5, "1": 1.0, "2": 0.5}
    assert accuracy(predicted, actual) == pytest.approx(4 / 6)


def test_shortcut_reliance_counts_only_other_classes():
    labels = torch.tensor([7, 7, 1, 2, 3, 4])
    predicted = torch.tensor([7, 7, 7, 7, 3, 4])  # two of four non-7 images flipped to 7
    assert shortcut_reliance(predicted, labels, 7) == 0.5
    assert shortcut_reliance(labels, labels, 7) == 0.0
