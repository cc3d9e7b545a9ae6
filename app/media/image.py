"""Still images (JPEG, PNG, WebP, BMP): size check from the header, then one RGB frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from app.media.errors import CorruptMedia, ImageTooLarge, MediaError, UnsupportedMedia
from app.media.limits import MediaLimits
from app.schemas import MediaInfo

# Sniffed format -> the only Pillow plugin allowed to parse it (no format guessing by Pillow).
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> counter-clockwise degrees applied for display (the same
# convention as a video's display matrix). Mirrored variants report their rotation part.
_ORIENTATION_CCW = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}


def load_image(path: Path, fmt: str, limits: MediaLimits) -> tuple[np.ndarray, MediaInfo]:
    """Decode ``path`` to an HxWx3 uint8 RGB array, EXIF orientation applied."""
    plugin = _PIL_FORMATS.get(fmt)
    if plugin is None:
        raise UnsupportedMedia(f"image format {fmt!r} is not supported")
    with _open_checked(path, plugin, limits) as im:
        rotation = _ORIENTATION_CCW.get(_orientation(im), 0)
        rgb = _decode_rgb(im)
    h, w = rgb.shape[:2]
    info = MediaInfo(
        kind="image", format=fmt, width=w, height=h, frames_sampled=1, rotation=rotation
    )
    return rgb, info


def _open_checked(path: Path, plugin: str, limits: MediaLimits) -> Image.Image:
    """Lazy open (header only) and refuse oversized images before any pixel is decoded."""
    try:
        im = Image.open(path, formats=[plugin])
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires only far above our default cap; same answer either way.
        raise ImageTooLarge(
            f"image is too large to decode (limit {limits.max_image_pixels:,} pixels)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptMedia(f"the {plugin} image header cannot be read: {exc}") from exc
    w, h = im.size
    if w * h > limits.max_image_pixels:
        im.close()
        raise ImageTooLarge(
            f"image is {w}x{h} = {w * h:,} pixels; the limit is {limits.max_image_pixels:,}"
        )
    if w == 0 or h == 0:
        im.close()
        raise CorruptMedia(f"the image header says {w}x{h} pixels")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF must not reject an otherwise good image
        return 1


def _decode_rgb(im: Image.Image) -> np.ndarray:
    try:
        im.load()
        upright = ImageOps.exif_transpose(im) or im
        return np.asarray(_flatten_alpha(upright), dtype=np.uint8)
    except (MediaError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        msg = f"the image is truncated or damaged and cannot be decoded: {exc}"
        raise CorruptMedia(msg) from exc


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """RGB; transparent areas become white rather than whatever colour hides under them."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
