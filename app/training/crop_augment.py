"""Augmentations of a training crop tensor ([3,H,W] in [0,1]) for g, and a fixed JPEG pass.

``Augment`` is what g trains with (photometric jitter, camera-like degradations, blur, JPEG,
flip); ``JpegAt`` is the deterministic re-encoding used for robust validation and the report.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from app.training.common import to_tensor, to_uint8


class Augment:
    """Random photometric degradations a real pipeline applies to faces, on [3,H,W] in [0,1].

    Randomness comes from torch's RNG, which DataLoader seeds per worker from the run seed.
    """

    def __init__(
        self,
        p_jitter: float = 0.8,
        jitter: float = 0.15,
        p_blur: float = 0.2,
        blur_sigma: tuple[float, float] = (0.3, 1.2),
        p_jpeg: float = 0.5,
        jpeg_quality: tuple[int, int] = (60, 95),
        p_flip: float = 0.5,
        p_noise: float = 0.0,
        noise_sigma: tuple[float, float] = (1.0, 4.0),
        p_resample: float = 0.0,
        resample: tuple[float, float] = (0.3, 0.8),
        p_cast: float = 0.0,
        cast: float = 0.12,
    ) -> None:
        self.p_jitter, self.jitter = p_jitter, jitter
        self.p_blur, self.blur_sigma = p_blur, blur_sigma
        self.p_jpeg, self.jpeg_quality = p_jpeg, jpeg_quality
        self.p_flip = p_flip
        # Camera-like degradations (issue: false alarms on everyday reals), off by default so
        # older recipes train as they did: sensor noise on 0..255, down-then-up sampling (a
        # small face the detector upscaled), a per-channel colour cast.
        self.p_noise, self.noise_sigma = p_noise, noise_sigma
        self.p_resample, self.resample = p_resample, resample
        self.p_cast, self.cast = p_cast, cast

    @staticmethod
    def _u(lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._u() < self.p_jitter:
            x = self.colour_jitter(x)
        x = self.camera(x)
        blur, jpeg = self._u() < self.p_blur, self._u() < self.p_jpeg
        if blur or jpeg:
            x = self.degrade(x, blur, jpeg)
        if self._u() < self.p_flip:
            x = x.flip(-1)
        return x.clamp(0.0, 1.0)

    def colour_jitter(self, x: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        x = x * self._u(1 - j, 1 + j)  # brightness
        mean = x.mean()
        x = (x - mean) * self._u(1 - j, 1 + j) + mean  # contrast
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
        return ((x - grey) * self._u(1 - j, 1 + j) + grey).clamp(0.0, 1.0)  # saturation

    def camera(self, x: torch.Tensor) -> torch.Tensor:
        """Resample, colour cast and noise (each with its probability), before blur/JPEG."""
        if self._u() < self.p_resample:
            size = x.shape[-1]
            small = max(8, round(size * self._u(*self.resample)))
            x = F.interpolate(F.interpolate(x[None], size=small, mode="area"), size=size,
                              mode="bilinear", align_corners=False)[0]
        if self._u() < self.p_cast:
            gains = 1 + self.cast * (2 * torch.rand(3, 1, 1) - 1)
            x = x * gains
        if self._u() < self.p_noise:
            x = x + torch.randn_like(x) * self._u(*self.noise_sigma) / 255.0
        return x.clamp(0.0, 1.0)

    def degrade(self, x: torch.Tensor, blur: bool, jpeg: bool) -> torch.Tensor:
        """Blur and/or JPEG in uint8 space, as a video encoder would see the face."""
        img = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        if blur:
            img = cv2.GaussianBlur(img, (0, 0), self._u(*self.blur_sigma))
        if jpeg:
            q = int(self._u(*self.jpeg_quality))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok:
                img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.0


class JpegAt:
    """Deterministic JPEG round trip at one quality, on [3,H,W] in [0,1] (robust validation:
    an upload re-encoded once more must not flip g's decisions)."""

    def __init__(self, quality: int) -> None:
        self.quality = quality

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        img = to_uint8(x)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return to_tensor(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else img)
