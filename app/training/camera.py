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


def threshold_for_fpr(p_real: np.ndarray, fpr: float) -> float:
    """The lowest threshold at which at most ``fpr`` of ``p_real`` are called fake, placed
    half-way to the next score so it keeps a margin (face is fake when p ≥ tau)."""
    p = np.sort(np.asarray(p_real, dtype=np.float64))[::-1]
    if p.size == 0:
        return 0.5
    k = int(np.floor(fpr * p.size))  # this many reals may sit at or above tau
    if k >= p.size:
        return float(p[-1])
    above = p[k - 1] if k > 0 else 1.0
    return float(min((p[k] + above) / 2, 1.0)) if p[k] < above else float(np.nextafter(p[k], 1))
