"""Differentiable copies of what the service does to an uploaded image before g sees a face.

The service cuts the square ``crop_box`` out of the decoded frame and resizes it to g's input
size with OpenCV (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging), as uint8.
An attack that optimises through a *different* resampler fools a different function: on the
bundled g, torch's ``area`` mode alone moved p_fake by 0.07 on a portrait. So shrinking here is
OpenCV's area filter written as two exact weight matrices (``A_y · region · A_xᵀ``, matching
``cv2.resize`` to half a grey level), and the crop is rounded to uint8 levels with a
straight-through gradient.

The EOT transforms model what happens to an image between the attacker and g: re-encoding as
JPEG (straight-through: the forward pass sees the real codec, the gradient passes as identity),
the platform resizing it by ±10 %, and the face detector's box landing a few pixels off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CropBox = tuple[int, int, int, int]


def area_matrix(n_in: int, n_out: int, device: torch.device | None = None) -> Tensor:
    """[n_out, n_in] weights of OpenCV's INTER_AREA shrink along one axis (rows sum to 1).

    Output pixel i averages the source interval [i·s, (i+1)·s), s = n_in / n_out, each source
    pixel weighted by how much of it the interval covers.
    """
    if n_out > n_in:
        raise ValueError(f"area_matrix shrinks only: {n_in} -> {n_out}")
    scale = n_in / n_out
    i = torch.arange(n_out, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(n_in, dtype=torch.float64, device=device)[None, :]
    cover = torch.minimum((i + 1) * scale, j + 1) - torch.maximum(i * scale, j)
    return (cover.clamp(min=0) / scale).float()


def resize_like_cv2(region: Tensor, size: int) -> Tensor:
    """[B,3,h,w] → [B,3,size,size] as ``cv2.resize`` would (area down, bilinear up)."""
    h, w = region.shape[-2:]
    if (h, w) == (size, size):
        return region
    if h >= size and w >= size:
        a_y = area_matrix(h, size, region.device)
        a_x = area_matrix(w, size, region.device)
        return a_y @ region @ a_x.T
    return F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False)


def quantize_st(x: Tensor) -> Tensor:
    """Round to 8-bit levels in the forward pass, identity in the backward pass."""
    return x + ((x * 255).round() / 255 - x).detach()


def crop_resize(image: Tensor, box: CropBox, size: int) -> Tensor:
    """The service's crop of ``image`` ([1,3,H,W] in [0,1]), as uint8 levels, differentiable."""
    x1, y1, x2, y2 = box
    return quantize_st(resize_like_cv2(image[..., y1:y2, x1:x2], size))


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """[1,3,h,w] in [0,1] through a real JPEG encode/decode at ``quality`` (no gradient)."""
    rgb = (x[0].detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the region")
    back = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    out = torch.from_numpy(np.ascontiguousarray(back)).permute(2, 0, 1)[None]
    return out.to(x.device, x.dtype) / 255


def jpeg_st(x: Tensor, quality: int) -> Tensor:
    """JPEG in the forward pass, identity in the backward pass (BPDA / straight-through)."""
    return x + (jpeg_roundtrip(x, quality) - x).detach()


@dataclass(frozen=True)
class Eot:
    """Ranges of the random transforms the EOT attack averages over."""

    samples: int = 4  # transforms per face per step
    resize: float = 0.10  # the whole image rescaled by a factor in [1 - r, 1 + r]
    shift: float = 0.05  # the crop box moved by up to this share of its side, each axis
    jpeg: tuple[int, int] = (70, 95)  # JPEG quality drawn from this range (inclusive)


def eot_crop(
    image: Tensor, box: CropBox, size: int, eot: Eot, rng: np.random.Generator
) -> Tensor:
    """One random view of the face: rescale → JPEG → shifted crop → the service's resize.

    Only a padded neighbourhood of the box is transformed (the rest of the image cannot reach
    the crop), which keeps each view cheap on large photos.
    """
    x1, y1, x2, y2 = box
    side = x2 - x1
    height, width = image.shape[-2:]
    pad = math.ceil(side * (eot.shift + eot.resize)) + 2
    px1, py1 = max(x1 - pad, 0), max(y1 - pad, 0)
    px2, py2 = min(x2 + pad, width), min(y2 + pad, height)
    patch = image[..., py1:py2, px1:px2]
    factor = float(rng.uniform(1 - eot.resize, 1 + eot.resize))
    ph, pw = patch.shape[-2:]
    new_h, new_w = max(round(ph * factor), 1), max(round(pw * factor), 1)
    patch = F.interpolate(patch, size=(new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=factor < 1)
    patch = jpeg_st(patch, int(rng.integers(eot.jpeg[0], eot.jpeg[1] + 1)))
    s = min(max(round(side * factor), 1), new_h, new_w)
    dx, dy = (rng.uniform(-eot.shift, eot.shift, size=2) * s).tolist()
    left = _clamp(round((x1 - px1) * factor + dx), 0, new_w - s)
    top = _clamp(round((y1 - py1) * factor + dy), 0, new_h - s)
    return crop_resize(patch, (left, top, left + s, top + s), size)


def _clamp(v: int, lo: int, hi: int) -> int:
    return min(max(v, lo), hi)
