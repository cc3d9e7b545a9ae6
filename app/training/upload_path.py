"""What an upload does to an attacked face before d sees it (``--upload-copies``).

An attacker's pixels reach d only after the platform and dfshield have handled them: a JPEG
re-encode (most sites store q 75–95), and the service's own crop resampled to g's input size
(OpenCV area filter from whatever size the face had). Both blur and quantise the perturbation.
Measured with ``dfshield redteam``: PGD saved as JPEG-90 came back ``attacked`` 5 times in 8,
PNG 12 in 13 — d had only seen attack perturbations exactly as the optimiser left them.

So each kept attacked crop may get copies passed through one such transform; a copy joins the
attacked class only while g still calls it real (it is still an attack that works). The label
keeps the job and says what was done (``pgd_rs@4+jpeg87``), so the family of the copy is the
job's family and leave-one-family-out holds both out together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from app.training.benign import jpeg, resample
from app.training.common import to_tensor

JPEG_QUALITY = (70, 96)  # [lo, hi) of the re-encode quality
RESCALE = (0.6, 1.0)  # face size at upload relative to g's input (area filter back up to it)


def upload_copy(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random upload transform of a uint8 RGB crop: JPEG, rescale, or rescale then JPEG."""
    kind = int(rng.integers(0, 3))
    name = []
    if kind >= 1:
        f = float(rng.uniform(*RESCALE))
        img = resample(img, f)  # the face at f x its size, then back up to g's input
        name.append(f"rescale{f:.2f}")
    if kind != 1:
        q = int(rng.integers(*JPEG_QUALITY))
        img = jpeg(img, q)
        name.append(f"jpeg{q}")
    return img, "+".join(name)


def surviving_copies(
    advs: Sequence[np.ndarray],
    copies: int,
    rng: np.random.Generator,
    score: Callable[[torch.Tensor], torch.Tensor],
    tau_fake: float,
) -> list[tuple[int, int, np.ndarray, str, float]]:
    """``copies`` upload copies of each attacked crop that g (``score`` → p_fake) calls real.

    Returns (crop index, copy index, image, transform name, p_fake) per kept copy.
    """
    made = [(i, k, *upload_copy(a, rng)) for i, a in enumerate(advs) for k in range(copies)]
    if not made:
        return []
    p = score(torch.stack([to_tensor(m[2]) for m in made])).tolist()
    return [(*m, pk) for m, pk in zip(made, p, strict=True) if pk < tau_fake]
