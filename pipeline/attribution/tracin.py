"""Influential training examples: TracIn over a classifier's checkpoints, restricted to its final linear layer.

TracIn (Pruthi et al., 2020) scores how much training example ``z`` helped the loss of test example ``z'``
as the sum over checkpoints of ``learning_rate * grad loss(z) . grad loss(z')``. With the gradient of the
final linear layer only (as captum's ``TracInCPFast``), a gradient is the outer product of the layer's
input ``a`` and ``e = softmax - one_hot(label)`` (cross-entropy), so a score is
``sum_c lr_c * (a_c . a'_c) * (e_c . e'_c)``.

Unnormalised scores favour training examples with large gradients: the ones the model still gets wrong or
barely right. ``normalize=True`` divides every checkpoint's term by both gradients' norms (the cosine of
the two gradients; "renormalised" TracIn, Hammoudeh & Lowd 2022), which asks which training examples pushed
the model the *same way* as the test example, however hard they were.

:class:`TracIn` computes the training examples' two factors once per checkpoint and keeps them (n_train x
(features + classes) floats per checkpoint), so any number of query sets costs one pass over the training
data. ``tests/test_influence.py`` checks the unnormalised scores against captum's ``TracInCPFast``.
Everything here takes tensors, a model and in-memory checkpoints; reading files is the stage's job.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.data.tensors import as_float, batch_slices
from pipeline.models.classifiers import layer_outputs, set_weights


@dataclass(frozen=True)
class Checkpoint:
    """The classifier's weights at one point of training and the learning rate that led there."""

    state_dict: dict
    learning_rate: float


@dataclass(frozen=True)
class Proponents:
    indices: torch.Tensor    # n_test x top_k, into the training images, strongest first
    scores: torch.Tensor     # n_test x top_k TracIn scores


@dataclass(frozen=True)
class GradientFactors:
    """Per example, the two factors of its final-layer gradient: the layer's input and softmax - one_hot(label)."""

    inputs: torch.Tensor     # n x features
    errors: torch.Tensor     # n x classes

    def norms(self) -> torch.Tensor:
        """The Frobenius norm of each example's gradient ``errors ⊗ inputs``."""
        return self.inputs.norm(dim=1) * self.errors.norm(dim=1)


@torch.no_grad()
def gradient_factors(model: nn.Module, final_layer: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int) -> GradientFactors:
    """The final-layer gradient factors of cross-entropy for every image (uint8 or float in [0, 1]) and its label."""
    device = next(model.parameters()).device
    inputs, errors = [], []
    for part in batch_slices(len(images), batch_size):
        x = as_float(images[part].to(device))
        logits, (layer_input,) = layer_outputs(model, x, [final_layer], capture="input")
        y = labels[part].to(device)
        errors.append(logits.float().softmax(1) - nn.functional.one_hot(y, logits.shape[1]).float())
        inputs.append(layer_input.float())
    return GradientFactors(torch.cat(inputs), torch.cat(errors))


def checkpoint_scores(query: GradientFactors, train: GradientFactors, normalize: bool, eps: float = 1e-12) -> torch.Tensor:
    """n_query x n_train gradient dot products (cosines when ``normalize``) at one checkpoint."""
    scores = (query.inputs @ train.inputs.T) * (query.errors @ train.errors.T)
    if normalize:
        scores /= query.norms()[:, None] * train.norms()[None, :] + eps
    return scores


class TracIn:
    """TracIn over ``checkpoints`` for a fixed set of training images; ``model`` is overwritten with each checkpoint.

    ``final_layer`` is the model's last ``nn.Linear`` (the one that outputs the logits).
    """

    def __init__(self, model: nn.Module, final_layer: nn.Module, checkpoints: list[Checkpoint], train_images: torch.Tensor,
                 train_labels: torch.Tensor, batch_size: int = 1024):
        if not checkpoints:
            raise ValueError("TracIn needs at least one checkpoint")
        self.model, self.final_layer, self.checkpoints, self.batch_size = model.eval(), final_layer, list(checkpoints), batch_size
        self.n_train = len(train_images)
        self.train_factors = [self._factors(c, train_images, train_labels) for c in self.checkpoints]

    def _factors(self, checkpoint: Checkpoint, images: torch.Tensor, labels: torch.Tensor) -> GradientFactors:
        set_weights(self.model, checkpoint.state_dict)
        return gradient_factors(self.model, self.final_layer, images, labels, self.batch_size)

    def scores(self, images: torch.Tensor, labels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """n_test x n_train TracIn scores of every training image for each test image and its label."""
        total = torch.zeros(len(images), self.n_train, device=self.train_factors[0].inputs.device)
        for checkpoint, train in zip(self.checkpoints, self.train_factors):
            query = self._factors(checkpoint, images, labels)
            total += checkpoint.learning_rate * checkpoint_scores(query, train, normalize)
        return total

    def proponents(self, images: torch.Tensor, labels: torch.Tensor, top_k: int = 10, normalize: bool = True) -> Proponents:
        """The ``top_k`` training images with the largest scores per test image, strongest first.

        Pass the predicted class as ``labels`` to ask what supports the classifier's decision.
        """
        if top_k > self.n_train:
            raise ValueError(f"top_k {top_k} exceeds the {self.n_train} training examples")
        best = self.scores(images, labels, normalize).topk(top_k, dim=1)
        return Proponents(best.indices.cpu(), best.values.cpu())
