"""The eps-ball: intensity separation, projection and 8-bit quantisation never leave it."""

from __future__ import annotations

import pytest
import torch

from app.protect.budget import combine, project, quantise, region_mask, separation_weight

EPS = 0.025


@pytest.mark.parametrize("seed", range(20))
def test_intensity_separation_never_exceeds_eps(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # Scale up to 3x eps: inputs outside the ball are clamped, never passed through.
    d1 = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1) * EPS * 3
    d2 = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1) * EPS * 3
    d1[..., :4, :] = EPS  # saturated interruption: no room left for poison
    d2[..., :4, :] = EPS
    d = combine(d1, d2, EPS)
    assert d.abs().max() <= EPS + 1e-7
    assert torch.allclose(d[..., :4, :], torch.full_like(d[..., :4, :], EPS))


def test_poison_fills_what_interruption_leaves() -> None:
    d1 = torch.tensor([0.0, EPS / 2, EPS, -EPS / 2])
    d2 = torch.full_like(d1, -EPS)
    assert separation_weight(d1, EPS).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.5])
    assert combine(d1, d2, EPS).tolist() == pytest.approx([-EPS, 0.0, EPS, -EPS])


def test_project_respects_eps_mask_and_range() -> None:
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    mask = region_mask(image.shape, [(2, 2, 6, 6)])
    d = project(torch.full_like(image, 0.5), image, EPS, mask)
    assert d.abs().max() <= EPS + 1e-7
    assert d[..., :2, :].abs().sum() == 0  # outside the face box: untouched
    assert ((image + d) >= 0).all() and ((image + d) <= 1).all()
    assert d[..., 2:6, 4:6].abs().sum() == 0  # already white: +eps clipped away


def test_quantised_image_stays_within_eps() -> None:
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (1, 3, 16, 16), generator=g, dtype=torch.uint8)
    d = (torch.rand(1, 3, 16, 16, generator=g) * 2 - 1) * EPS
    out = quantise(u8, d)
    assert (out.int() - u8.int()).abs().max() <= EPS * 255
