"""Grad-CAM as a segmentation of the digit (an IoU sweep over thresholds), and counterfactual Grad-CAM.

``gradcam_views`` returns what it found, the sweep as a table and its pictures; the caller writes them.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.attribution.methods import attribute_batches, gradcam_explainer, skip_reason
from pipeline.attribution.plots import counterfactual_figure, placeholder_figure, segmentation_figure
from pipeline.attribution.scores import foreground_mask, pixel_map, segmentation_iou

PICTURES = ("gradcam_segmentation.png", "gradcam_counterfactual.png")


def gradcam_views(model: nn.Module, sets: dict, gallery: dict, digit_source: torch.Tensor, batch_size: int,
                  segmentation_thresholds: int, dataset: str) -> tuple[dict, object, dict]:
    """Segmentation sweep of Grad-CAM against the digit's pixels, and the counterfactual Grad-CAM picture.

    ``gallery``: the rows of ``sets`` shown (``gallery_rows``); ``digit_source``: the test images the digit's
    pixels are read from (without a stamped shortcut). Returns the record for the details, the sweep as a
    (threshold, iou) DataFrame and {file name: figure} of the pictures (placeholders when Grad-CAM cannot run).
    """
    import pandas as pd

    if skip_reason("gradcam", model):
        return ({"best_threshold": None, "best_iou": None, "skipped": skip_reason("gradcam", model)},
                pd.DataFrame(columns=["threshold", "iou"]),
                {picture: placeholder_figure(skip_reason("gradcam", model)) for picture in PICTURES})
    sample = sets["sample"]
    cams = attribute_batches(gradcam_explainer(model), sample["images"], sample["targets"], batch_size)
    truth = foreground_mask(digit_source[sample["index"]])
    thresholds = torch.linspace(0, 1, segmentation_thresholds + 1, device=cams.device)[:-1]
    iou = segmentation_iou(cams, truth, thresholds).mean(dim=1)
    best = int(iou.argmax())
    table = pd.DataFrame({"threshold": thresholds.cpu().numpy(), "iou": iou.cpu().numpy()})
    n = min(6, len(cams))
    segmentation = segmentation_figure(thresholds.cpu().numpy(), iou.cpu().numpy(), best, sample["images"][:n].cpu().numpy(),
                                       pixel_map(cams[:n]).cpu().numpy(), truth[:n].cpu().numpy(), dataset)

    rows = [(sets[k]["images"][s], sets[k]["targets"][s]) for k, s in gallery.items()]
    images, targets = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    normal = attribute_batches(gradcam_explainer(model), images, targets, batch_size)
    against = attribute_batches(gradcam_explainer(model, counterfactual=True), images, targets, batch_size)
    counterfactual = counterfactual_figure(images.cpu().numpy(), pixel_map(normal).cpu().numpy(),
                                           pixel_map(against).cpu().numpy(), targets.cpu().numpy(), dataset)
    return ({"best_threshold": thresholds[best].item(), "best_iou": iou[best].item()}, table,
            dict(zip(PICTURES, (segmentation, counterfactual))))
