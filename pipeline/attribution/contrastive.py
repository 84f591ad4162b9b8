"""Contrastive attribution of mistakes: each misclassified image explained for the predicted and for the true
class, and how alike the two maps are (Spearman's rank correlation of their pixel maps)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.attribution.methods import AttributionOptions, attribute_batches, make_explainer, skip_reason
from pipeline.attribution.plots import contrastive_figure, placeholder_figure
from pipeline.attribution.scores import nanmean, pixel_map, rank_correlation
from pipeline.data.tensors import subsample


def contrastive_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                         method: str, options: AttributionOptions, noise: torch.Tensor, n_images: int,
                         rng: np.random.Generator, class_names: list[str], n_shown: int, dataset: str) -> tuple[dict, object]:
    """Attributions of misclassified images for the predicted and the true class, and how alike they are.

    ``n_images`` of the mistakes (drawn by ``rng``) are explained with ``method``; the picture shows ``n_shown``.
    Returns the record for the details and the picture (a placeholder when there is nothing to show).
    """
    wrong = torch.nonzero(predicted != labels).squeeze(1)
    record = {"method": method, "n_misclassified": len(wrong), "n_analysed": 0, "mean_rank_correlation": None}
    reason = skip_reason(method, model)
    if reason or not len(wrong):
        return record | ({"skipped": reason} if reason else {}), placeholder_figure(reason or "no misclassified test images")
    chosen = wrong[torch.as_tensor(subsample(len(wrong), n_images, rng), device=wrong.device)]
    explain = make_explainer(method, model, options, noise)
    images = images[chosen]
    for_predicted = pixel_map(attribute_batches(explain, images, predicted[chosen], options.batch_size))
    for_true = pixel_map(attribute_batches(explain, images, labels[chosen], options.batch_size))
    record.update(n_analysed=len(chosen), mean_rank_correlation=nanmean(rank_correlation(for_predicted, for_true)))
    n = min(n_shown, len(chosen))
    figure = contrastive_figure(images[:n].cpu().numpy(), for_predicted[:n].cpu().numpy(), for_true[:n].cpu().numpy(),
                                [class_names[i] for i in predicted[chosen][:n].tolist()],
                                [class_names[i] for i in labels[chosen][:n].tolist()], method, dataset)
    return record, figure
