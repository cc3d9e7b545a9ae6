"""Parity of autocast (fp16 / bf16) scoring against fp32, checked before AMP is trusted.

The Analyzer autocasts g's and d's forward on CUDA (``DFSHIELD_AMP``; maps stay fp32). A
network whose scores move under half precision (e.g. logits near a saturated softmax, or a
layer that overflows fp16) would silently change verdicts, so at load the same probe crops are
scored both ways and AMP is switched off when any probability moves by more than
``AMP_TOLERANCE``. Probe: seeded smooth random crops (image-like, no test data needed in the
image) and their fp32 Saliency maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.models.wrappers import AdversarialDetector, Detector

AMP_TOLERANCE = 0.01  # max |Δp| (p_fake or p_attacked) between autocast and fp32
PROBE_FACES = 8


@dataclass(frozen=True)
class AmpParity:
    dtype: str
    max_dp_fake: float
    max_dp_attacked: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return max(self.max_dp_fake, self.max_dp_attacked) <= self.tolerance


def probe_crops(size: int, device: torch.device, n: int = PROBE_FACES,
                seed: int = 0) -> torch.Tensor:
    """``n`` smooth random [0,1] crops: noise low-passed to image-like spectra."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(4, size // 8), max(4, size // 8), generator=gen)
    fine = torch.rand(n, 3, size, size, generator=gen) * 0.1
    return (F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
            * 0.9 + fine).clamp(0, 1).to(device)


def amp_parity(detector: Detector, adversarial: AdversarialDetector, device: torch.device,
               dtype: torch.dtype, tolerance: float = AMP_TOLERANCE) -> AmpParity:
    """Score the probe in fp32 and under ``torch.autocast(device.type, dtype)``."""
    from app.pipeline.explain import Explainer  # captum loads with the pipeline anyway

    x = probe_crops(detector.input_size, device)
    maps = Explainer(detector, "saliency").maps(x)
    with torch.no_grad():
        ref_fake, ref_att = detector.p_fake(x), adversarial.p_attacked(x, maps)
        with torch.autocast(device.type, dtype=dtype):
            amp_fake = detector.p_fake(x).float()
            amp_att = adversarial.p_attacked(x, maps).float()
    return AmpParity(str(dtype).removeprefix("torch."),
                     float((amp_fake - ref_fake).abs().max()),
                     float((amp_att - ref_att).abs().max()), tolerance)
