"""Attacks written at the face's upload resolution (``--native-share``).

An attacker perturbs the image they upload, not g's 128 px crop: the service then cuts the
face out and shrinks it to g's input with OpenCV's area filter, which averages the
perturbation over blocks of 1.2-2.5 source pixels. Measured with ``dfshield redteam`` on
held-out faces (crop boxes of 220-300 px), d trained only on perturbations as the optimiser
left them at 128 px flagged 69 % of the uploads that fooled g, against 100 % of the same
families at crop level.

So a share of each job's faces is attacked on the crop at a larger side (the 224 px source
crop resized to ``scale`` x g's input), through an exact differentiable copy of that shrink
(``app.redteam.geometry``) with uint8 rounding; the row d trains on is the shrunk result, the
crop the service would hand g. Its label says so (``pgd_rs@8+native1.7``); the family is the
job's, so leave-one-family-out holds both out together. Measured on 2026-12-03, a d trained
with ``--native-share 0.5`` did no better on the red team's uploads (README), so the demo
recipe leaves it at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from app.redteam.geometry import quantize_st, resize_like_cv2
from app.training.common import to_tensor

NATIVE_SCALE = (1.2, 2.2)  # [lo, hi) of the attacked side relative to g's input


class BehindShrink(nn.Module):
    """g as the service runs it on a larger crop: OpenCV-area shrink to ``size``, uint8
    levels (straight-through), then g."""

    def __init__(self, g: nn.Module, size: int) -> None:
        super().__init__()
        self.g, self.size = g, size
        # A new Module is in training mode; attacks restore the wrapper's mode when they
        # finish, which would otherwise switch g's BatchNorm to batch statistics.
        self.train(g.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.g(quantize_st(resize_like_cv2(x, self.size)))


def draw_side(rng: np.random.Generator, size: int) -> int:
    """Side of the crop an attacker's upload gives the service, for g's input ``size``."""
    return int(round(size * float(rng.uniform(*NATIVE_SCALE))))


def shrink(advs: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """What the service makes of each attacked crop: OpenCV area resize to g's input."""
    return [cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA) for a in advs]


def native_overrides(attack: str, overrides: dict, side: int, size: int) -> dict:
    """DDN's L2 bound is stated for g's input; at ``side`` px the same RMS needs it scaled."""
    if attack != "ddn" or "eps_l2" not in overrides:
        return dict(overrides)
    return {**overrides, "eps_l2": float(overrides["eps_l2"]) * side / size}


def stack(images: Sequence[np.ndarray]) -> Tensor:
    """uint8 HxWx3 crops → [N,3,H,W] float in [0,1]."""
    return torch.stack([to_tensor(i) for i in images])
