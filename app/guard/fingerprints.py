"""Salted fingerprints of face crops, in the manner of Blacklight (Li et al., USENIX Sec. 2022).

A fingerprint is a small set of 64-bit hashes of quantised pixel windows of the crop g sees, in
two views of the same grey image (half of the hashes each):

- *levels*: each grey level, after a slight blur (``LEVELS_BLUR``, which takes out JPEG's
  block noise), quantised to ``level // QUANT_STEP`` (7 levels). Robust to JPEG re-encoding,
  resizing and sparse noise (NES, benign re-uploads).
- *relief*: the vertical difference of neighbouring pixels quantised to 5 levels (steps of
  ``RELIEF_STEP``). It ignores any perturbation that is constant down a column or over a
  block, which is how Square moves (column stripes first, then +-eps squares): its queries
  keep an identical relief where their levels all differ.

In each view: the crop is brought to ``SIDE`` x ``SIDE`` grey (one geometry for every detector
input size, so the calibration holds); every run of ``WINDOW`` consecutive values of the
row-major image is a window; windows with fewer than ``MIN_CHANGES`` changes (flat skin,
background) are dropped, because unrelated faces share them; a window's code (its values in
base 7 or 5) is tagged with its view and its coarse place (a ``GRID`` x ``GRID`` cell); codes go
through a keyed 64-bit mixer whose keys come from the deployment's secret salt, and the
smallest distinct values are kept (top-S/2 per view).

Two crops are near-duplicates when, in either view, they share more than T hashes. Without the
salt an attacker cannot tell which windows are kept. The mixer is not a MAC: nobody outside the
service ever sees a hash, so it only needs to be unpredictable, and it runs vectorised (about
2 ms per face on one CPU core).

Calibration (212 dataset crops, the bundled video, recorded NES/Square queries) is in the
README's threat model section; change the constants here only with a new calibration, since
stored fingerprints of the old geometry would stop matching.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SIDE = 128
QUANT_STEP = 40
LEVELS_BLUR = 0.8  # Gaussian sigma in pixels, levels view only
LEVELS = 255 // QUANT_STEP + 1
RELIEF_STEP = 12
RELIEF_LIMIT = 2  # relief levels -2..2: differences beyond +-30 grey levels saturate
WINDOW = 16
MIN_CHANGES = 3
GRID = 4
ROUNDS = 3
VIEWS = ("levels", "relief")
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_EMPTY = np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True)
class FingerprintKey:
    """The mixer keys derived from the salt. Its repr never shows them."""

    words: tuple[int, ...]

    @classmethod
    def from_salt(cls, salt: str | bytes) -> FingerprintKey:
        raw = salt.encode() if isinstance(salt, str) else salt
        if not raw:
            raise ValueError("the guard salt must not be empty")
        digest = hashlib.blake2b(raw, digest_size=8 * ROUNDS, person=b"dfshield-guard").digest()
        words = tuple(int.from_bytes(digest[i : i + 8], "little") for i in range(0, len(digest), 8))
        return cls(words)

    def __repr__(self) -> str:
        return "FingerprintKey(<secret>)"

    def mix(self, x: np.ndarray) -> np.ndarray:
        """Keyed bijection on uint64 (splitmix64 rounds, each after XOR with a key word)."""
        x = x.copy()
        for word in self.words:
            x ^= np.uint64(word)
            x *= _M1
            x ^= x >> np.uint64(31)
            x *= _M2
            x ^= x >> np.uint64(29)
        return x

    def digest_file(self, path: Path, chunk: int = 1 << 20) -> str:
        """Keyed BLAKE2b of a file's bytes: identifies byte-identical re-uploads."""
        key = b"".join(w.to_bytes(8, "little") for w in self.words)
        h = hashlib.blake2b(digest_size=16, key=key, person=b"dfshield-exact")
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        return h.hexdigest()


def _grey(crop: np.ndarray) -> np.ndarray:
    """The crop as ``SIDE`` x ``SIDE`` grey levels (int16, so differences may go negative)."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB crop, got {crop.shape} {crop.dtype}")
    if crop.shape[:2] != (SIDE, SIDE):
        interp = cv2.INTER_AREA if crop.shape[0] > SIDE else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (SIDE, SIDE), interpolation=interp)
    return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.int16)


def view_values(grey: np.ndarray, view: str) -> tuple[np.ndarray, int]:
    """One view's 2-D array of small non-negative values, and how many values there are."""
    if view == "levels":
        soft = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), LEVELS_BLUR)
        return np.round(soft).astype(np.int16) // QUANT_STEP, LEVELS
    diff = grey[1:, :] - grey[:-1, :]
    steps = np.floor(diff / RELIEF_STEP + 0.5).astype(np.int16)
    return np.clip(steps, -RELIEF_LIMIT, RELIEF_LIMIT) + RELIEF_LIMIT, 2 * RELIEF_LIMIT + 1


def window_codes(values: np.ndarray, base: int, view_bit: int) -> np.ndarray:
    """Codes of the informative windows of one view, tagged with view and place."""
    rows, cols = values.shape
    flat = values.ravel()
    changes = np.concatenate(([0], np.cumsum(flat[1:] != flat[:-1])))
    n = flat.size - WINDOW + 1
    busy = changes[WINDOW - 1 :] - changes[:n] >= MIN_CHANGES
    powers = np.uint64(base) ** np.arange(WINDOW, dtype=np.uint64)  # 7**16 < 2**45: exact
    codes = sliding_window_view(flat.astype(np.uint64), WINDOW) @ powers
    start = np.arange(n)
    cell = (start // cols) * GRID // rows * GRID + (start % cols) * GRID // cols
    tagged = (codes * np.uint64(GRID * GRID) + cell.astype(np.uint64)) * np.uint64(2)
    return (tagged + np.uint64(view_bit))[busy]


@dataclass(frozen=True)
class Fingerprint:
    """Sorted distinct hashes per view; ``hashes`` is what the memory stores."""

    levels: np.ndarray
    relief: np.ndarray

    @property
    def hashes(self) -> np.ndarray:
        return np.concatenate([self.levels, self.relief])

    def __len__(self) -> int:
        return int(self.levels.size + self.relief.size)


def _top(codes: np.ndarray, key: FingerprintKey, k: int) -> np.ndarray:
    return np.unique(key.mix(codes))[:k] if codes.size else _EMPTY


def fingerprint(crop: np.ndarray, key: FingerprintKey, hashes: int) -> Fingerprint:
    """``hashes`` salted window hashes of ``crop``: the smallest half of each view's.

    A crop with little texture may yield fewer; an empty view never matches anything.
    """
    grey = _grey(crop)
    per_view = []
    for bit, view in enumerate(VIEWS):
        values, base = view_values(grey, view)
        per_view.append(_top(window_codes(values, base, bit), key, hashes // 2))
    return Fingerprint(*per_view)


def shared(a: Fingerprint, b: Fingerprint) -> int:
    """Hashes two fingerprints have in common in their closer view (what T is compared to)."""
    return max(int(np.intersect1d(a.levels, b.levels, assume_unique=True).size),
               int(np.intersect1d(a.relief, b.relief, assume_unique=True).size))
