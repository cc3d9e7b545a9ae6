"""Differentiable face crops and the random transformations protection is optimised through.

The attacker's data preparation cuts the project's square 1.3x crop around each face
(``app.pipeline.faces.square_crop_box``) and resizes it to the generator's input. Protection
back-propagates through the same crop; EOT (expectation over transformation) then draws a
random photo rescale, a jittered crop box (another detector's box) and, optionally, a real JPEG
round trip with a straight-through gradient, so the perturbation does not depend on one exact
pixel grid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CropBox = tuple[int, int, int, int]


def crop_resize(image: torch.Tensor, box: CropBox, size: int) -> torch.Tensor:
    """[1,3,H,W] image → [1,3,size,size] crop of ``box`` (x1,y1,x2,y2 exclusive), antialiased
    when shrinking (like the pipeline's INTER_AREA) and differentiable."""
    x1, y1, x2, y2 = box
    region = image[:, :, y1:y2, x1:x2]
    if region.shape[-1] == size and region.shape[-2] == size:
        return region
    return F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=region.shape[-1] > size)


@dataclass(frozen=True)
class Eot:
    """Ranges of the random transformations (all off: ``Eot.none()``)."""

    rescale: tuple[float, float] = (0.7, 1.0)  # photo resized by the platform / attacker
    box_jitter: float = 0.04  # crop box shift and size change, fraction of its side
    p_jpeg: float = 0.3  # chance of a real JPEG round trip (straight-through gradient)
    jpeg_quality: tuple[int, int] = (75, 95)

    @classmethod
    def none(cls) -> Eot:
        return cls(rescale=(1.0, 1.0), box_jitter=0.0, p_jpeg=0.0)


def jitter_box(box: CropBox, width: int, height: int, frac: float,
               rng: np.random.Generator) -> CropBox:
    """A square box near ``box``: shifted and resized by up to ``frac`` of its side."""
    x1, y1, x2, y2 = box
    side = x2 - x1
    if frac <= 0 or side < 4:
        return box
    new = int(round(side * (1 + rng.uniform(-frac, frac))))
    new = max(4, min(new, width, height))
    cx = (x1 + x2) / 2 + rng.uniform(-frac, frac) * side
    cy = (y1 + y2) / 2 + rng.uniform(-frac, frac) * side
    left = int(min(max(round(cx - new / 2), 0), width - new))
    top = int(min(max(round(cy - new / 2), 0), height - new))
    return left, top, left + new, top + new


def jpeg_straight_through(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG in the forward pass, identity gradient in the backward pass (BPDA)."""
    return x + (jpeg_roundtrip(x.detach(), quality) - x.detach())


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """[B,3,H,W] in [0,1] → the same after 8-bit quantisation and JPEG at ``quality``."""
    out = []
    for img in x:
        arr = (img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(dec.copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(x.device)


def sample_view(image: torch.Tensor, box: CropBox, eot: Eot,
                rng: np.random.Generator) -> tuple[CropBox, float, int | None]:
    """One random view: (jittered box, rescale factor, JPEG quality or None)."""
    _, _, h, w = image.shape
    jbox = jitter_box(box, w, h, eot.box_jitter, rng)
    scale = float(rng.uniform(*eot.rescale))
    quality = int(rng.integers(eot.jpeg_quality[0], eot.jpeg_quality[1] + 1)) \
        if rng.random() < eot.p_jpeg else None
    return jbox, scale, quality


def view(image: torch.Tensor, box: CropBox, size: int, scale: float,
         quality: int | None) -> torch.Tensor:
    """The crop as the attacker's generator would see it after a rescale and JPEG.

    A rescale of the whole photo by ``scale`` is, for this crop, a resize of the region to
    ``scale * side`` pixels before the final resize to ``size``.
    """
    return to_size(region_view(image, box, scale, quality), size)


def region_view(image: torch.Tensor, box: CropBox, scale: float,
                quality: int | None) -> torch.Tensor:
    """The crop's region after the photo's rescale and JPEG, still at photo resolution (where
    an attacker's purifier would run)."""
    x1, y1, x2, y2 = box
    region = image[:, :, y1:y2, x1:x2]
    side = max(8, int(round((x2 - x1) * scale)))
    if side != region.shape[-1]:
        region = F.interpolate(region, size=(side, side), mode="bilinear", align_corners=False,
                               antialias=side < region.shape[-1])
    if quality is not None:
        region = jpeg_straight_through(region, quality)
    return region


def to_size(region: torch.Tensor, size: int) -> torch.Tensor:
    """A whole square region resized to the generator's input."""
    return crop_resize(region, (0, 0, region.shape[-1], region.shape[-2]), size)
