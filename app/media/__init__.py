"""Media input layer: sniff the type from bytes, validate against limits, sample frames."""

from app.media.errors import (
    CorruptMedia,
    EmptyFile,
    FileTooLarge,
    ImageTooLarge,
    MediaError,
    NoVideoStream,
    ResolutionTooLarge,
    TooManyFrames,
    UnsupportedMedia,
    VideoTooLong,
)
from app.media.frame import SampledFrame
from app.media.limits import MediaLimits
from app.media.sniff import SniffResult, sniff_bytes, sniff_file
from app.media.source import MediaSource, open_media, probe_media

__all__ = [
    "CorruptMedia",
    "EmptyFile",
    "FileTooLarge",
    "ImageTooLarge",
    "MediaError",
    "MediaLimits",
    "MediaSource",
    "NoVideoStream",
    "ResolutionTooLarge",
    "SampledFrame",
    "SniffResult",
    "TooManyFrames",
    "UnsupportedMedia",
    "VideoTooLong",
    "open_media",
    "probe_media",
    "sniff_bytes",
    "sniff_file",
]
