"""Every registered g explains through the service's Explainer; every d scores (crop, map)."""

from __future__ import annotations

import pytest
import torch

from app.models.registry import create_model, list_models
from app.pipeline.explain import Explainer

CROP = 160  # native crop size, different from every input size


@pytest.mark.parametrize("name", list_models("detector"))
def test_every_detector_explains_with_saliency(name: str) -> None:
    torch.manual_seed(0)
    g = create_model(name)
    x = torch.rand(1, 3, CROP, CROP)
    maps = Explainer(g, "saliency").maps(x)
    s = g.input_size
    assert maps.shape == (1, 3, s, s)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.max() > 0  # a real gradient reached the input


@pytest.mark.parametrize("name", list_models("adversarial"))
def test_every_adversarial_detector_scores_a_map(name: str) -> None:
    torch.manual_seed(0)
    g = create_model("resnet10t_df")
    d = create_model(name)
    x = torch.rand(2, 3, CROP, CROP)
    p = d.p_attacked(x, Explainer(g, "saliency").maps(x))  # map size differs from d's input
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
