"""The one Gaussian blur of the pipeline: explanation masks, the random control map, the blurred
integrated-gradients baseline and the feature-visualisation regulariser all call :func:`gaussian_blur`.

It is torchvision's ``gaussian_blur`` (a 2-d Gaussian kernel, one per channel). The image border is
padded by reflection without repeating the edge pixel (torch's ``reflect`` mode, OpenCV's
``BORDER_REFLECT_101``, the default of ``cv2.GaussianBlur``): the pixel just outside the edge takes
the value of the pixel just inside it. A region that fills the border stays 1 there; a lone pixel on
the edge loses part of its mass over the border (a corner pixel keeps about half of it for sigma 1).
"""
from __future__ import annotations

import math

import torch


def kernel_size_for(sigma: float) -> int:
    """The odd kernel side that covers +-3 sigma (at least 3): 2 * ceil(3 sigma) + 1."""
    return 2 * max(1, math.ceil(3 * sigma)) + 1


def gaussian_blur(images: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Gaussian blur of every channel of ``images`` [..., C, H, W] (float), borders reflected.

    ``sigma`` in pixels; 0 (or less) returns ``images`` unchanged. ``kernel_size`` (odd) defaults to
    :func:`kernel_size_for`. Reflection needs the kernel's radius to be smaller than the image.
    """
    from torchvision.transforms.v2.functional import gaussian_blur as torchvision_blur

    if sigma <= 0:
        return images
    size = kernel_size_for(sigma) if kernel_size is None else kernel_size
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian blur kernel size must be a positive odd integer, got {size}")
    height, width = images.shape[-2:]
    if size // 2 >= min(height, width):
        raise ValueError(f"Gaussian blur with kernel size {size} (sigma {sigma}) needs images wider than {size // 2} "
                         f"pixels for reflected borders; these are {height} x {width}")
    return torchvision_blur(images, [size, size], [sigma, sigma])
