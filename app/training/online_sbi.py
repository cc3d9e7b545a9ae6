"""Online self-blending for training g: every real crop is drawn with a fresh self-blended twin.

Shiohara & Yamasaki (CVPR 2022) train on reals only and make a new self-blended fake of each
real in every batch. Pairing matters: the real and its fake share the face, pose, compression and
photometric augmentation, so the only thing that separates them is the blending artefact, and a
small model trained from scratch learns that instead of who is in the picture. A fixed set of
pre-rendered fakes (the other mode) is seen over and over and is easy to memorise.

Needs the 5 landmarks (crop pixels) on each real record; ``prepare`` and ``demo-data`` write them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from app.training.common import read_rgb, resize_rgb, to_tensor
from app.training.sbi import self_blend  # grey in, grey out

log = logging.getLogger("dfshield.training")
Transform = Callable[[torch.Tensor], torch.Tensor]


def blendable(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real records that carry 5 landmarks (what self-blending needs)."""
    reals = [r for r in records if r["label"] == 0]
    usable = [r for r in reals if r.get("landmarks") and len(r["landmarks"]) == 5]
    if not usable:
        raise ValueError("online self-blending needs real crops with 5 landmarks in the index "
                         "(written by `dfshield train prepare` and `demo-data`); none found")
    if len(usable) < len(reals):
        log.warning("online SBI: %d of %d real crops have no landmarks and are left out",
                    len(reals) - len(usable), len(reals))
    return usable


class SelfBlendPairs(torch.utils.data.Dataset):
    """Item ``i`` = (tensor [2,3,S,S]: real then its fresh self-blend, labels [0, 1], i,
    blend masks [2,1,S,S]: zeros for the real, the peak-normalised blend mask for the fake).

    Both halves go through the same tensor ``transform`` (same torch RNG draws: the same
    JPEG quality, blur and colour jitter), so they differ only by the blend; the flip
    (``p_flip``) happens here, to the images and the mask alike (give ``transform`` none). Random
    draws come from torch's RNG, which the DataLoader seeds from the run seed.
    """

    def __init__(self, root: Path, records: Sequence[dict[str, Any]], size: int,
                 transform: Transform | None = None,
                 blend_scale: tuple[float, float] = (1.0, 1.0), p_soften: float = 0.0,
                 p_flip: float = 0.0) -> None:
        self.root = Path(root)
        self.records = blendable(records)
        self.size = size
        self.transform = transform
        self.blend_scale = blend_scale
        self.p_soften = p_soften
        self.p_flip = p_flip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        rec = self.records[i]
        real = read_rgb(self.root / rec["path"])
        lms = np.asarray(rec["landmarks"], np.float64)
        real, lms = self._rescale(real, lms)
        if float(torch.rand(())) < self.p_soften:
            real = soften(real, 0.35 + 0.65 * float(torch.rand(())))
        seed = int(torch.randint(0, 2**62, ()))
        fake, mask = self_blend(real, lms, np.random.default_rng(seed))
        pair = [to_tensor(resize_rgb(img, self.size)) for img in (real, fake)]
        mask_t = _mask_tensor(mask, self.size)
        if float(torch.rand(())) < self.p_flip:
            pair, mask_t = [x.flip(-1) for x in pair], mask_t.flip(-1)
        if self.transform is not None:
            state = torch.get_rng_state()
            pair[0] = self.transform(pair[0])
            torch.set_rng_state(state)
            pair[1] = self.transform(pair[1])
        masks = torch.stack([torch.zeros_like(mask_t), mask_t])
        return torch.stack(pair), torch.tensor([0, 1]), i, masks

    def _rescale(self, img: np.ndarray, lms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resize the real by a random factor in ``blend_scale`` before blending. Faces reach g
        from many native sizes and are blended at theirs: a blend made on a 256 px face and
        shrunk to 128 keeps its colour and boundary cues but loses most of its blur cue, so
        g must not rely on that cue alone."""
        lo, hi = self.blend_scale
        side = round(img.shape[0] * (lo + (hi - lo) * float(torch.rand(()))))
        if side == img.shape[0] or side < 16:
            return img, lms
        interp = cv2.INTER_AREA if side < img.shape[0] else cv2.INTER_CUBIC
        out = cv2.resize(img, (side, side), interpolation=interp)
        return out, lms * (side / img.shape[0])


def _mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """Blend mask → [1,S,S] scaled to peak 1: "blended here", whatever the blend ratio."""
    m = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    peak = float(m.max())
    return torch.from_numpy(m / peak if peak > 0 else m)[None]


def soften(img: np.ndarray, factor: float) -> np.ndarray:
    """Down- then up-sample by ``factor`` (< 1): a face that arrived small or upscaled. Applied
    to the real *before* blending, so its twin is just as soft and softness alone means
    nothing; without it g learns "blurry face = fake" from the blurred SBI sources."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(8, round(w * factor)), max(8, round(h * factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def flatten_pairs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs [B,2,3,S,S] → [2B,3,S,S] (plain batches pass through)."""
    if x.dim() == 5:
        return x.flatten(0, 1), y.flatten()
    return x, y
