import math

import pytest
import torch

from pipeline.evaluation.classification import accuracy, confusion_matrix, per_class_accuracy, share_of_others_assigned


def test_confusion_and_per_class_accuracy():
    actual = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    confusion = confusion_matrix(actual, predicted, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert per_class_accuracy(confusion) == {"0": 0.5, "1": 1.0, "2": 0.5}
    assert accuracy(predicted, actual) == pytest.approx(4 / 6)


def test_share_of_others_assigned_counts_only_other_classes():
    labels = torch.tensor([7, 7, 1, 2, 3, 4])
    predicted = torch.tensor([7, 7, 7, 7, 3, 4])  # two of four non-7 images assigned to 7
    assert share_of_others_assigned(predicted, labels, 7) == 0.5
    assert share_of_others_assigned(labels, labels, 7) == 0.0
    assert share_of_others_assigned(torch.tensor([7, 7, 7, 3, 3, 4]), labels, 3) == pytest.approx(0.2)  # 1 of 5 non-3s
    assert math.isnan(share_of_others_assigned(labels[:2], labels[:2], 7))  # no other class: undefined
