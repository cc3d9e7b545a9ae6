"""Camera-like degradations of a face crop (uint8 RGB): what everyday uploads do to real faces.

Used to measure false alarms (a real face called fake after JPEG, noise, blur, a small face
upscaled, a colour cast) and to choose ``tau_fake`` for a stated false-alarm rate on degraded
reals. Each takes the crop and a numpy Generator (only noise draws from it), so a given seed
reproduces the same degraded set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.training import benign

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _jpeg(q: int) -> Degrade:
    return lambda img, _: benign.jpeg(img, q)


def _noise(sigma: float) -> Degrade:
    def f(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
    return f


def _blur(sigma: float) -> Degrade:
    return lambda img, _: benign.blur(img, sigma)


def _resample(factor: float) -> Degrade:
    return lambda img, _: benign.resample(img, factor)


def _cast(gains: tuple[float, float, float]) -> Degrade:
    return lambda img, _: np.clip(img * np.float32(gains), 0, 255).astype(np.uint8)


DEGRADATIONS: dict[str, Degrade] = {
    "JPEG q40": _jpeg(40), "JPEG q70": _jpeg(70), "noise σ4/255": _noise(4.0),
    "blur σ1.5": _blur(1.5), "small x0.4": _resample(0.4), "warm cast": _cast((1.12, 1.0, 0.86)),
}


def degraded_set(crops: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Every crop as it is and under every degradation (len = crops × (1 + degradations))."""
    rng = np.random.default_rng(seed)
    return [*crops, *(fn(c, rng) for fn in DEGRADATIONS.values() for c in crops)]
