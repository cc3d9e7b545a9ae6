"""The unit every consumer of the media layer receives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SampledFrame:
    index: int  # position among the sampled frames
    source_index: int | None  # frame number in the source (None where a seek hid it)
    timestamp: float  # seconds from the start of the video
    image: np.ndarray  # HxWx3 uint8 RGB, upright
