"""Input caps applied before any heavy decoding (one place, built from Settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings


@dataclass(frozen=True)
class MediaLimits:
    """Caps on what the media layer accepts and how much it decodes."""

    max_video_seconds: float = 600.0
    max_frames: int = 32
    max_frames_cap: int = 256
    max_width: int = 4096
    max_height: int = 4096
    max_image_pixels: int = 40_000_000
    sample_window: float = 0.5  # fraction of the sampling interval (video.FrameSampler)

    @classmethod
    def from_settings(cls, s: Settings) -> MediaLimits:
        return cls(
            max_video_seconds=s.max_video_seconds,
            max_frames=s.max_frames,
            max_frames_cap=s.max_frames_cap,
            sample_window=s.sample_window,
            max_width=s.max_width,
            max_height=s.max_height,
            max_image_pixels=s.max_image_pixels,
        )
