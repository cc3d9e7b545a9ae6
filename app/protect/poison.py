"""Stage 2, poisoning: make the attacker's face detector (MTCNN, white box) miss the face.

An attacker who collects protected photos to retrain on them first detects and crops faces;
a face the detector misses (or boxes wrongly) never reaches the training set. facenet-pytorch's
MTCNN is three small torch networks; its cascade is rebuilt here differentiably around each
face, the way ``detect_face`` runs it: P-Net on the image pyramid (area resampling, the
project's ``min_face_size`` and ``detect_max_side``), then R-Net and O-Net on boxes near the
face. Each stage passes a window whose face probability exceeds its threshold (0.6, 0.7, 0.7);
the loss is a hinge on the face log-odds above a lower ``margin`` probability, summed over the
windows and boxes that still pass, so PGD pushes every one of them under the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from torch import nn

from app.protect.budget import combine, project
from app.protect.crop import jpeg_straight_through
from app.protect.interrupt import PgdConfig

Box = tuple[float, float, float, float]
Progress = Callable[[int, int], None]
PYRAMID_FACTOR = 0.709  # facenet-pytorch's default scale step
MOMENTUM = 0.9


def _normalise(x01: torch.Tensor) -> torch.Tensor:
    # MTCNN's input convention: (pixel - 127.5) / 128 on 0..255 values.
    return (x01 * 255.0 - 127.5) * 0.0078125


def _hinge(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum of the face log-odds above ``logit(margin)``; ``logits`` [N,2,...] pre-softmax."""
    log_odds = logits[:, 1] - logits[:, 0]
    return F.relu(log_odds - math.log(margin / (1 - margin))).sum()


def _logit_net(net: nn.Module, softmax: str) -> nn.Module:
    # A copy that returns pre-softmax scores: on a clear face the softmax saturates at 1 in
    # float32 and its gradient vanishes, so PGD must differentiate the logits instead.
    copy = deepcopy(net).eval()
    setattr(copy, softmax, nn.Identity())
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy


@dataclass(frozen=True)
class DetectorView:
    """How the attacker runs MTCNN: the project's defaults (``app.pipeline.faces``)."""

    min_face_size: int = 40
    detect_max_side: int = 1280
    p_jpeg: float = 0.3
    margin: float = 0.3  # push probabilities below this (thresholds are 0.6 / 0.7 / 0.7)
    refine_boxes: int = 4  # jittered boxes per face for R-Net and O-Net


class MtcnnLoss:
    """Differentiable MTCNN face evidence around given faces of one image (to be minimised)."""

    def __init__(self, mtcnn: MTCNN, view: DetectorView | None = None) -> None:
        self.pnet = _logit_net(mtcnn.pnet, "softmax4_1")
        self.rnet = _logit_net(mtcnn.rnet, "softmax5_1")
        self.onet = _logit_net(mtcnn.onet, "softmax6_1")
        self.view = view or DetectorView()

    def det_factor(self, height: int, width: int) -> float:
        return min(1.0, self.view.detect_max_side / max(height, width))

    def __call__(self, image: torch.Tensor, boxes: Sequence[Box], rng: np.random.Generator,
                 frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``image`` may be a window of the frame; ``frame_hw`` is then the frame's size (the
        detector's downscale depends on it)."""
        h, w = frame_hw or image.shape[-2:]
        # With min_face_size scaled like the frame (as FaceDetector does) the pyramid in
        # full-resolution pixels does not depend on the detection downscale; what an attacker
        # with other settings changes is the pyramid's phase, drawn here.
        factor = self.det_factor(h, w)
        phase = float(rng.uniform(PYRAMID_FACTOR, 1.0))
        quality = int(rng.integers(75, 96)) if rng.random() < self.view.p_jpeg else None
        loss = torch.zeros(())
        for box in boxes:
            loss = loss + self.pnet_term(image, box, factor, quality, phase)
            loss = loss + self.refine_term(image, box, rng)
        return loss

    def pyramid(self, face_side: float, factor: float) -> list[float]:
        """Scales (relative to full resolution) at which P-Net sees this face at 4-64 px: it
        fires on whole heads smaller than its 12 px window and on parts of larger faces."""
        min_size = max(12.0, self.view.min_face_size * factor)
        s, scales = 12.0 / min_size, []
        while s * face_side * factor >= 4 and len(scales) < 32:
            if s * face_side * factor <= 64:
                scales.append(s * factor)
            s *= PYRAMID_FACTOR
        return scales

    def pnet_term(self, image: torch.Tensor, box: Box, factor: float,
                  quality: int | None, phase: float = 1.0) -> torch.Tensor:
        region = _context(image, box, 1.6)
        if quality is not None:
            region = jpeg_straight_through(region, quality)
        side = max(box[2] - box[0], box[3] - box[1])
        loss = torch.zeros(())
        for t in self.pyramid(side, factor):
            t *= phase
            size = (int(region.shape[-2] * t + 1), int(region.shape[-1] * t + 1))
            if min(size) < 12:
                continue
            _, logits = self.pnet(_normalise(F.interpolate(region, size=size, mode="area")))
            loss = loss + _hinge(logits, self.view.margin)
        return loss

    def refine_term(self, image: torch.Tensor, box: Box, rng: np.random.Generator) -> torch.Tensor:
        crops24, crops48 = [], []
        for _ in range(self.view.refine_boxes):
            region = _square_region(image, _jitter(box, rng))
            crops24.append(F.interpolate(region, size=(24, 24), mode="area"))
            crops48.append(F.interpolate(region, size=(48, 48), mode="area"))
        _, p_r = self.rnet(_normalise(torch.cat(crops24)))
        _, _, p_o = self.onet(_normalise(torch.cat(crops48)))
        return _hinge(p_r, self.view.margin) + _hinge(p_o, self.view.margin)


def _jitter(box: Box, rng: np.random.Generator) -> Box:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    dx, dy = rng.uniform(-0.1, 0.1, 2) * (w, h)
    s = rng.uniform(0.85, 1.15)
    cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
    return cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2


def _square_region(image: torch.Tensor, box: Box) -> torch.Tensor:
    # MTCNN squares its candidate boxes (rerec) before cutting them for R-Net / O-Net.
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return _cut(image, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _context(image: torch.Tensor, box: Box, scale: float) -> torch.Tensor:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = scale * (x2 - x1) / 2, scale * (y2 - y1) / 2
    return _cut(image, cx - hw, cy - hh, cx + hw, cy + hh)


def _cut(image: torch.Tensor, x1: float, y1: float, x2: float, y2: float) -> torch.Tensor:
    _, _, h, w = image.shape
    left, top = max(0, int(x1)), max(0, int(y1))
    right = min(w, max(left + 2, int(math.ceil(x2))))
    bottom = min(h, max(top + 2, int(math.ceil(y2))))
    return image[:, :, top:bottom, left:right]


Keep = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def poisoning(image: torch.Tensor, boxes: Sequence[Box], loss_fn: MtcnnLoss, cfg: PgdConfig,
              mask: torch.Tensor, d1: torch.Tensor | None = None,
              progress: Progress | None = None,
              stop: Callable[[], bool] | None = None,
              keep: Keep | None = None, keep_weight: float = 1.0,
              frame_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """PGD on the poison ``d2``; the image the detector sees is ``image + combine(d1, d2)``.
    ``keep(adv_image, rng)`` (stage 1's distortion, to be kept high) is subtracted with
    ``keep_weight``, both terms divided by their first value so that neither scale dominates.
    Returns (the combined perturbation, within ``cfg.eps`` by construction; steps done)."""
    rng = np.random.default_rng(cfg.seed + 1)
    d1 = torch.zeros_like(image) if d1 is None else d1
    start = torch.rand(image.shape, generator=torch.Generator().manual_seed(cfg.seed + 1))
    d2 = ((start * 2 - 1) * cfg.eps * mask).requires_grad_(True)
    momentum = torch.zeros_like(image)
    done = 0
    for step in range(cfg.steps):
        if stop is not None and stop():
            break
        delta = project(combine(d1, d2, cfg.eps), image, cfg.eps, mask)
        loss = loss_fn(image + delta, boxes, rng, frame_hw)
        if keep is not None:
            kept = keep(image + delta, rng)
            if step == 0:
                scales = (float(loss.detach()) or 1.0, float(kept.detach()) or 1.0)
            loss = loss / scales[0] - keep_weight * kept / scales[1]
        (grad,) = torch.autograd.grad(loss, d2)
        with torch.no_grad():
            # MI-FGSM: the random views flip raw gradient signs from step to step.
            momentum = MOMENTUM * momentum + grad / grad.abs().mean().clamp_min(1e-12)
            d2 = ((d2 - cfg.alpha * momentum.sign()).clamp(-cfg.eps, cfg.eps) * mask)
        d2.requires_grad_(True)
        done = step + 1
        if progress:
            progress(done, cfg.steps)
    with torch.no_grad():
        return project(combine(d1, d2, cfg.eps), image, cfg.eps, mask), done
