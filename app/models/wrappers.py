"""Differentiable wrappers: resize + normalise live *inside* the model.

Attacks and XAI therefore act on the native [0,1] crop, exactly as in the paper's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from app.models.registry import ModelSpec


class Preprocessor(nn.Module):
    """[B,3,H,W] RGB in [0,1] → resized to ``input_size`` and normalised (differentiable)."""

    def __init__(self, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return (x - self.mean) / self.std


class Wrapped(nn.Module):
    """A registry network with its preprocessing in front: ``spec``, ``prep``, ``net``."""

    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        p = spec.preprocess
        self.prep = Preprocessor(p.input_size, p.mean, p.std)
        self.net = net

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> int:
        return self.spec.preprocess.input_size


class Detector(Wrapped):
    """g: crop → logits [B,2], index 0 = real, 1 = fake."""

    REAL, FAKE = 0, 1


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prep(x))

    @torch.no_grad()
    def p_fake(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).float().softmax(dim=1)[:, self.FAKE]


class AdversarialDetector(Wrapped):
    """d: (crop, XAI map image) → logits [B,2], index 0 = clean, 1 = attacked.

    The raw ``net`` takes the two preprocessed tensors: ``net(crop_n, map_n)``.
    Both inputs share the same preprocessing (resize to input_size, ImageNet normalisation).
    """

    CLEAN, ATTACKED = 0, 1


    def forward(self, crop: torch.Tensor, xai_map: torch.Tensor) -> torch.Tensor:
        if crop.shape[0] != xai_map.shape[0]:
            raise ValueError(f"batch mismatch: {crop.shape[0]} crops vs {xai_map.shape[0]} maps")
        return self.net(self.prep(crop), self.prep(xai_map))

    @torch.no_grad()
    def p_attacked(self, crop: torch.Tensor, xai_map: torch.Tensor) -> torch.Tensor:
        return self.forward(crop, xai_map).float().softmax(dim=1)[:, self.ATTACKED]


class Embedder(Wrapped):
    """A pretrained backbone as published: crop → descriptor [B,D] (e.g. 128-d face identity).

    Served by nothing; it is what g and d start from, and what conversion checks are run on.
    """


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prep(x))
