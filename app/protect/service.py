"""What the CLI and the API share: photo loading, option checks, the loaded protector, PNG I/O.

Every bad input becomes a :class:`ProtectError` with a stable code (the media layer's codes
for files, ``bad_option`` / ``no_face`` / ``model_error`` for the rest), so both front ends
answer the same way.
"""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from app.config import Settings, get_settings
from app.protect.protector import NoFaceFound, Progress, ProtectOptions, Protector, ProtectResult
from app.protect.report import Mode
from app.protect.settings import ProtectSettings, get_protect_settings

if TYPE_CHECKING:
    from app.protect.denoiser import Denoiser


class ProtectError(Exception):
    def __init__(self, code: str, message: str, http_status: int = 422,
                 exit_code: int = 2) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status, self.exit_code = http_status, exit_code


def load_photo(path: Path, settings: Settings | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB of a still image; type sniffed from bytes, size checked from header."""
    from app.media import MediaLimits
    from app.media.errors import MediaError
    from app.media.image import load_image
    from app.media.sniff import sniff_file

    settings = settings or get_settings()
    if not path.is_file():
        raise ProtectError("not_found", f"no such file: {path}", 404)
    limits = MediaLimits.from_settings(settings)
    if max_pixels is not None:
        limits = replace(limits, max_image_pixels=min(limits.max_image_pixels, max_pixels))
    try:
        found = sniff_file(path)
        if found.kind != "image":
            raise ProtectError("unsupported_media", f"protect takes a photo, got a {found.kind} "
                               f"({found.format}); supported: JPEG, PNG, WebP, BMP", 415)
        return load_image(path, found.format, limits)[0]
    except MediaError as exc:
        raise ProtectError(exc.code, exc.message, exc.http_status) from None


def options_from(mode: str | None = None, eps: float | None = None, steps: int | None = None,
                 ps: ProtectSettings | None = None,
                 deadline_s: float | None = None) -> ProtectOptions:
    ps = ps or get_protect_settings()
    mode = mode or ps.mode
    if mode not in ("interrupt", "tsdf"):
        raise ProtectError("bad_option", f"mode must be 'interrupt' or 'tsdf', got {mode!r}")
    eps = ps.eps if eps is None else eps
    if not 0 < eps <= ps.eps_max:
        raise ProtectError("bad_option", f"eps must be in (0, {ps.eps_max:g}] on [0,1] "
                           f"(default {ps.eps:g}); got {eps:g}")
    if steps is not None and not 1 <= steps <= 500:
        raise ProtectError("bad_option", f"steps must be in [1, 500], got {steps}")
    m: Mode = mode  # type: ignore[assignment]
    return ProtectOptions(mode=m, eps=eps, steps=steps or ps.steps,
                          poison_steps=steps or ps.poison_steps, eot_samples=ps.eot_samples,
                          interruption_share=ps.interruption_share, deadline_s=deadline_s,
                          purifier_eot=ps.purifier_eot, hf_weight=ps.hf_weight,
                          feature_weight=ps.feature_weight)


_lock = threading.Lock()
_cache: dict[str, Protector] = {}


def protector_for(models_dir: Path | None = None, settings: Settings | None = None) -> Protector:
    """The bundled generators + the project's MTCNN, loaded once per models dir."""
    from app.models.store import ModelStoreError
    from app.pipeline.faces import FaceDetector
    from app.protect.generators import load_generators

    settings = settings or get_settings()
    folder = Path(models_dir or settings.models_dir)
    with _lock:
        if str(folder) not in _cache:
            try:
                gens = load_generators(folder)
                purifier = _purifier(folder)
            except ModelStoreError as exc:
                raise ProtectError("model_error", " ".join(str(exc).split()), 503, 1) from None
            faces = FaceDetector(device="cpu", min_face_size=settings.min_face_size,
                                 max_faces=get_protect_settings().max_faces,
                                 prob_min=settings.face_prob_min, scale=settings.face_scale,
                                 crop_size=64, detect_max_side=settings.face_detect_max_side)
            _cache[str(folder)] = Protector(gens, faces, purifier)
        return _cache[str(folder)]


def _purifier(folder: Path) -> Denoiser | None:
    """The store's denoiser, loaded only when DFSHIELD_PROTECT_PURIFIER_EOT asks for it (the
    default path loads nothing new)."""
    from app.models.store import ModelStoreError
    from app.protect.denoiser import load_denoiser

    if not get_protect_settings().purifier_eot:
        return None
    purifier = load_denoiser(folder)
    if purifier is None:
        raise ModelStoreError(f"DFSHIELD_PROTECT_PURIFIER_EOT is on but {folder} lists no "
                              "model with role 'purifier'; publish one with `dfshield train "
                              "denoiser` or turn the setting off")
    return purifier


def run_protect(protector: Protector, rgb: np.ndarray, opts: ProtectOptions,
                progress: Progress | None = None) -> ProtectResult:
    try:
        return protector.protect(rgb, opts, progress)
    except NoFaceFound as exc:
        raise ProtectError(exc.code, str(exc), 422) from None


def png_bytes(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an HxWx3 uint8 image (no metadata: the bytes are only the pixels)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.write_bytes(png_bytes(rgb))
