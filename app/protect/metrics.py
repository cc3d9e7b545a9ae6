"""Metrics of the TSDF / disrupting-deepfakes evaluation code, restated for [0,1] images.

That code works on images in [-1,1]: the *edited region* of a manipulation is where the
generator changed the input (sum over channels of |G(x) - x| > 0.5), ``L2_mask`` is the mean
squared difference between the outputs on the protected and on the original input inside that
region, and an interruption *succeeds* when ``L2_mask > 0.05``. Values here are computed on
the same [-1,1] scale so that the 0.05 threshold means what it meant there.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from app.pipeline.tracks import iou

SUCCESS_L2 = 0.05
EDIT_THRESHOLD = 0.5


def edited_mask(clean_in: torch.Tensor, clean_out: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] region the generator edited (whole crop where it edited nothing)."""
    diff = ((clean_out - clean_in) * 2).abs().sum(dim=1, keepdim=True)
    mask = (diff > EDIT_THRESHOLD).float()
    empty = mask.flatten(1).sum(1) == 0
    mask[empty] = 1.0
    return mask


def l2_mask(adv_out: torch.Tensor, clean_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample: mean over the edited region of the squared output change, [-1,1] scale."""
    sq = ((adv_out - clean_out) * 2).pow(2) * mask
    return sq.flatten(1).sum(1) / (mask.flatten(1).sum(1) * adv_out.shape[1])


def psnr_ssim(original: np.ndarray, protected: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two HxWx3 uint8 images (SSIM over colour channels)."""
    if np.array_equal(original, protected):
        return float("inf"), 1.0
    psnr = peak_signal_noise_ratio(original, protected, data_range=255)
    ssim = structural_similarity(original, protected, channel_axis=2, data_range=255)
    return float(psnr), float(ssim)


def found(box: tuple[float, ...], boxes: list[tuple[float, ...]], min_iou: float = 0.7) -> bool:
    """Whether a detection of ``boxes`` overlaps ``box`` at IoU >= ``min_iou``."""
    return any(iou(box, b) >= min_iou for b in boxes)
