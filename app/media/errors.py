"""One typed error family for every bad input, each with a stable machine code."""

from __future__ import annotations


class MediaError(Exception):
    """Input that cannot be analysed. ``code`` is stable and machine-readable."""

    code = "bad_media"
    http_status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedMedia(MediaError):
    code, http_status = "unsupported_media", 415


class CorruptMedia(MediaError):
    code, http_status = "corrupt_media", 422


class EmptyFile(MediaError):
    code, http_status = "empty_file", 400


class NoVideoStream(MediaError):
    code, http_status = "no_video_stream", 422


class VideoTooLong(MediaError):
    code, http_status = "video_too_long", 413


class ImageTooLarge(MediaError):
    code, http_status = "image_too_large", 413


class ResolutionTooLarge(MediaError):
    code, http_status = "resolution_too_large", 413


class FileTooLarge(MediaError):
    code, http_status = "file_too_large", 413


class TooManyFrames(MediaError):
    """A caller asked for more sampled frames than the configured cap allows."""

    code, http_status = "too_many_frames", 422
