"""Find the videos/images of a dataset tree and decide each one's split by identity.

Two layouts:

* FaceForensics++: ``original_sequences/youtube/<c>/videos/<id>.mp4`` are real, one identity
  each; ``manipulated_sequences/<method>/<c>/videos/<target>_<source>.mp4`` are fakes that
  involve two identities (the target video's and the source face's).
* Folders: ``real/`` and ``fake/`` searched recursively for videos and images. The identity is
  the first subfolder (``real/<identity>/clip.mp4``, ``fake/<identity>/clip.mp4``: use the same
  identity names on both sides so a person's reals and fakes share a split), else the file stem.

A source goes to the split of its identities when they all hash to the same one, else nowhere
(``split_for`` returns None): a cross-split fake would leak a face into a second split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_FFPP_REAL = re.compile(r"^[^_]+$")
_FFPP_FAKE = re.compile(r"^([^_]+)_([^_]+)$")


@dataclass(frozen=True)
class Source:
    path: Path
    rel_path: Path  # relative to the dataset root (provenance)
    source_id: str  # unique, filesystem-safe; names the crop files
    label: int  # 0 real, 1 fake
    method: str  # "original", an FF++ method name, or "fake" for the folders layout
    identity: str  # the person the frames show (FF++ fakes: the target video's id)
    identities: tuple[str, ...]  # every identity the media involves (split key)


def identity_split(identity: str, seed: int, splits: Sequence[float]) -> str:
    """Stable split of one identity: sha256(seed, identity) as a uniform number in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, splits, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def split_for(identities: Sequence[str], seed: int, splits: Sequence[float]) -> str | None:
    """The split shared by all ``identities``, or None when they disagree."""
    found = {identity_split(i, seed, splits) for i in identities}
    return found.pop() if len(found) == 1 else None


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def detect_layout(root: Path) -> str:
    if (root / "original_sequences").is_dir() or (root / "manipulated_sequences").is_dir():
        return "ffpp"
    if (root / "real").is_dir() or (root / "fake").is_dir():
        return "folders"
    raise ValueError(
        f"{root}: no FaceForensics++ tree (original_sequences/, manipulated_sequences/) "
        "and no real/ or fake/ folder"
    )


def _videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXT)


def discover_ffpp(
    root: Path, compression: str = "c23", methods: Sequence[str] | None = None
) -> tuple[list[Source], int]:
    """Sources of an FF++ tree → (sources, number of video files whose name did not parse)."""
    found: list[Source] = []
    unparsed = 0
    for path in _videos(root / "original_sequences" / "youtube" / compression / "videos"):
        if not _FFPP_REAL.match(path.stem):
            unparsed += 1
            continue
        found.append(Source(path, path.relative_to(root), f"original-{safe_id(path.stem)}", 0,
                            "original", path.stem, (path.stem,)))
    manip = root / "manipulated_sequences"
    available = sorted(p.name for p in manip.iterdir() if p.is_dir()) if manip.is_dir() else []
    wanted = list(methods) if methods else available
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(f"methods {missing} not found under {manip}; available: {available}")
    for method in wanted:
        for path in _videos(manip / method / compression / "videos"):
            m = _FFPP_FAKE.match(path.stem)
            if not m:  # e.g. DeepFakeDetection's actor-scene names
                unparsed += 1
                continue
            target, face = m.groups()
            sid = f"{safe_id(method)}-{safe_id(path.stem)}"
            found.append(Source(path, path.relative_to(root), sid, 1, method, target,
                                (target, face)))
    return found, unparsed


def discover_folders(root: Path) -> tuple[list[Source], int]:
    """Sources under ``real/`` and ``fake/`` → (sources, number of files that are not media)."""
    found: list[Source] = []
    ignored = 0
    for label, name in ((0, "real"), (1, "fake")):
        base = root / name
        if not base.is_dir():
            continue
        seen: set[str] = set()
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if path.suffix.lower() not in VIDEO_EXT | IMAGE_EXT:
                ignored += 1
                continue
            rel = path.relative_to(base)
            identity = rel.parts[0] if len(rel.parts) > 1 else path.stem
            sid = safe_id("__".join(rel.with_suffix("").parts))
            if sid in seen:  # clip.mp4 next to clip.jpg
                sid = safe_id(f"{sid}-{path.suffix.lstrip('.')}")
            seen.add(sid)
            method = "original" if label == 0 else "fake"
            found.append(Source(path, path.relative_to(root), sid, label, method, identity,
                                (identity,)))
    return found, ignored
