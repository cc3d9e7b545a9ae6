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
    """Item ``i`` = (tensor [2,3,S,S]: real then its fresh self-blend, labels [0, 1], i).

    Both halves go through the same tensor ``transform`` (same torch RNG draws: the same
    JPEG quality, blur, colour jitter and flip), so they differ only by the blend. Random draws
    come from torch's RNG, which the DataLoader seeds from the run seed.
    """

    def __init__(self, root: Path, records: Sequence[dict[str, Any]], size: int,
                 transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.records = blendable(records)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rec = self.records[i]
        real = read_rgb(self.root / rec["path"])
        seed = int(torch.randint(0, 2**62, ()))
        fake, _ = self_blend(real, np.asarray(rec["landmarks"], np.float64),
                             np.random.default_rng(seed))
        pair = [to_tensor(resize_rgb(img, self.size)) for img in (real, fake)]
        if self.transform is not None:
            state = torch.get_rng_state()
            pair[0] = self.transform(pair[0])
            torch.set_rng_state(state)
            pair[1] = self.transform(pair[1])
        return torch.stack(pair), torch.tensor([0, 1]), i


def flatten_pairs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs [B,2,3,S,S] → [2B,3,S,S] (plain batches pass through)."""
    if x.dim() == 5:
        return x.flatten(0, 1), y.flatten()
    return x, y
