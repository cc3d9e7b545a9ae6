"""The L-inf budget: masks, projection, and TSDF's intensity separation.

Intensity separation puts two perturbations into one eps-ball: where the interruption
perturbation ``d1`` is small the poison ``d2`` is written at full strength, and it is weighted
down linearly as ``|d1|`` approaches eps::

    d = d1 + (1 - |d1| / eps) * d2,   |d1| <= eps, |d2| <= eps   =>   |d| <= eps

(|d| <= |d1| + (eps - |d1|) = eps, per pixel and channel), so the sum never leaves the ball.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.protect.crop import CropBox


def region_mask(shape: torch.Size | Sequence[int], boxes: Sequence[CropBox]) -> torch.Tensor:
    """[1,1,H,W] mask, 1 inside any of ``boxes``: only face regions are perturbed."""
    _, _, h, w = shape
    mask = torch.zeros(1, 1, h, w)
    for x1, y1, x2, y2 in boxes:
        mask[:, :, y1:y2, x1:x2] = 1.0
    return mask


def project(delta: torch.Tensor, image: torch.Tensor, eps: float | torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """Clip ``delta`` into the (per-pixel) eps-ball, the mask and the [0,1] image range."""
    delta = torch.maximum(torch.minimum(delta, torch.as_tensor(eps)), -torch.as_tensor(eps))
    delta = delta * mask
    return (image + delta).clamp(0.0, 1.0) - image


def separation_weight(d1: torch.Tensor, eps: float) -> torch.Tensor:
    """1 where the interruption perturbation is 0, falling to 0 where it uses all of eps."""
    return (1.0 - d1.abs() / eps).clamp(0.0, 1.0)


def combine(d1: torch.Tensor, d2: torch.Tensor, eps: float) -> torch.Tensor:
    """Intensity separation of interruption ``d1`` and poison ``d2`` (both within eps)."""
    d2 = d2.clamp(-eps, eps)
    return d1.clamp(-eps, eps) + separation_weight(d1, eps) * d2


def quantise(image_u8: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The protected 8-bit image. The original is 8-bit, so rounding the sum moves each
    value by round(255*delta): the stored perturbation is <= 255*eps levels, still in budget."""
    return (image_u8.float() + delta * 255.0).round().clamp(0, 255).to(torch.uint8)
