"""Benign corruptions of real face crops (uint8 RGB): what d must never call "attacked".

An adversarial perturbation is a small, structured change of pixels; so are JPEG, sensor
noise, blur, resampling, sharpening and colour shifts. A d that has only seen pristine clean
crops learns "any high-frequency change = attacked" (measured: σ = 4/255 Gaussian noise alone
raised 18 % false alarms). d's clean class therefore also holds corrupted real faces, drawn
at random from these families (``random_corruption``), and the evaluation reports false
alarms per named corruption at its strongest setting (``NAMED``).

Every function takes the crop and a numpy Generator and returns a new uint8 crop.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Corrupt = Callable[[np.ndarray, np.random.Generator], np.ndarray]
MAX_NOISE_SIGMA = 4.0  # in 0..255 units: the "up to σ = 4/255"


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    # cv2 codes BGR: convert so chroma subsampling sees the true colours.
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else img


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _u8(img + rng.normal(0.0, sigma, img.shape))


def poisson_noise(img: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise of a sensor collecting ``peak`` photons at white (lower = noisier)."""
    scaled = img.astype(np.float64) / 255.0 * peak
    return _u8(rng.poisson(scaled) / peak * 255.0)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma)


def resample(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(int(w * factor), 8), max(int(h * factor), 8)),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def sharpen(img: np.ndarray, amount: float) -> np.ndarray:
    """Unsharp mask, as phone cameras and social apps apply it."""
    soft = cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.float64)
    return _u8(img + amount * (img - soft))


def gamma_cast(img: np.ndarray, gamma: float, gains: tuple[float, float, float]) -> np.ndarray:
    x = (img.astype(np.float64) / 255.0) ** gamma * np.asarray(gains)
    return _u8(x * 255.0)


def moire(img: np.ndarray, amplitude: float, period: float, angle: float) -> np.ndarray:
    """A faint sinusoidal grating: the beat pattern of a screen photographed by a camera."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
    return _u8(img + amplitude * np.sin(phase)[..., None])


def _draw(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


FAMILIES: dict[str, Corrupt] = {
    "jpeg": lambda im, r: jpeg(im, int(r.integers(40, 96))),
    "gaussian_noise": lambda im, r: gaussian_noise(im, _draw(r, 1.0, MAX_NOISE_SIGMA), r),
    "poisson_noise": lambda im, r: poisson_noise(im, _draw(r, 60.0, 400.0), r),
    "blur": lambda im, r: blur(im, _draw(r, 0.5, 1.8)),
    "resample": lambda im, r: resample(im, _draw(r, 0.35, 0.8)),
    "sharpen": lambda im, r: sharpen(im, _draw(r, 0.3, 1.5)),
    "gamma_colour": lambda im, r: gamma_cast(
        im, _draw(r, 0.75, 1.33), tuple(r.uniform(0.88, 1.12, 3))),  # type: ignore[arg-type]
    "moire": lambda im, r: moire(im, _draw(r, 1.0, 3.0), _draw(r, 3.0, 9.0),
                                 _draw(r, 0.0, np.pi)),
}

# The strongest setting of each family: what the false-alarm report measures.
NAMED: dict[str, Corrupt] = {
    "jpeg q40": lambda im, r: jpeg(im, 40),
    "gaussian σ4/255": lambda im, r: gaussian_noise(im, MAX_NOISE_SIGMA, r),
    "poisson peak 60": lambda im, r: poisson_noise(im, 60.0, r),
    "blur σ1.8": lambda im, r: blur(im, 1.8),
    "resample x0.35": lambda im, r: resample(im, 0.35),
    "sharpen 1.5": lambda im, r: sharpen(im, 1.5),
    "gamma 1.33 + cast": lambda im, r: gamma_cast(im, 1.33, (1.12, 1.0, 0.88)),
    "moiré 3/255": lambda im, r: moire(im, 3.0, 5.0, 0.6),
}


def random_corruption(
    img: np.ndarray, rng: np.random.Generator, max_chain: int = 2
) -> tuple[np.ndarray, str]:
    """One to ``max_chain`` random families applied in turn; returns the crop and their names."""
    names = list(FAMILIES)
    k = int(rng.integers(1, max_chain + 1))
    picked = [names[i] for i in rng.choice(len(names), size=k, replace=False)]
    for name in picked:
        img = FAMILIES[name](img, rng)
    return img, "+".join(picked)
