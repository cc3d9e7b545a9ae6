"""AMP parity check (app.models.amp_check) on CPU with bf16 autocast: the same function the
Analyzer runs on CUDA with fp16 before it trusts autocast."""

from __future__ import annotations

import torch

from app.models.amp_check import amp_parity, probe_crops
from app.models.store import load_bundle

CPU = torch.device("cpu")


def test_probe_is_seeded_and_image_like() -> None:
    a, b = probe_crops(64, CPU), probe_crops(64, CPU)
    assert torch.equal(a, b) and a.shape == (8, 3, 64, 64)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Smooth: neighbouring pixels differ far less than independent noise would (~0.33).
    assert float((a[..., 1:] - a[..., :-1]).abs().mean()) < 0.1


def test_bf16_autocast_moves_scores_measurably_and_the_tolerance_decides() -> None:
    bundle = load_bundle("models", CPU)
    loose = amp_parity(bundle.detector, bundle.adversarial, CPU, torch.bfloat16, tolerance=1.0)
    assert loose.ok and loose.dtype == "bfloat16"
    assert 0.0 < max(loose.max_dp_fake, loose.max_dp_attacked) <= 1.0  # bf16 does round
    tight = amp_parity(bundle.detector, bundle.adversarial, CPU, torch.bfloat16, tolerance=0.0)
    assert not tight.ok
