"""Offline demo corpus: real faces from redistributable media + self-blended / cross-blended fakes.

No deepfake dataset exists offline, so fakes are made from real faces (``sbi.py``). Identities:
the Pexels woman (video frames), obama (3 photos), biden, grace_hopper, the astronaut and the
cameraman (scikit-image), and up to 100 LFW people (``skimage/data/lfw_subset.npy``: 25x25 grey
face crops, upscaled to 160 px). On an upscaled LFW crop MTCNN finds the face but its box spans
the whole (tight) crop, so the whole upscaled image is the face crop, with MTCNN's landmarks;
when MTCNN misses, the mean landmarks of the LFW faces it found (or the canonical 1.3x-crop
ones) stand in. LFW and the cameraman are grey and stay grey in reals and fakes alike.

Identities are split, not samples: ~20% of them test, ~10% val (at least one each), the rest
train, drawn separately among the named people and among LFW people. Every identity gives the
same number of reals and fakes (half self-blended, half blended with another identity of the
same split and colour mode; self-blended when there is none), so every split has both labels.
The crops use the crop dataset format of ``data.py``; ``videos.py`` adds short clips.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.training import augment
from app.training.data import CropWriter, write_meta
from app.training.sbi import canonical_landmarks, cross_blend, self_blend

Progress = Callable[[int, int], None]
PEXELS = "pexels_woman_3063838.mp4"
PORTRAITS = {
    "obama.jpg": "obama",
    "obama2.jpg": "obama",
    "obama3.jpg": "obama",
    "biden.jpg": "biden",
    "grace_hopper.jpg": "grace_hopper",
}
LICENCES = {
    PEXELS: "Pexels licence (video 3063838 by Wolfgang Langer)",
    "portraits": "US-government / US Navy photos: public domain",
    "skimage": "scikit-image data: astronaut public domain, camera CC0, LFW subset",
}
LFW_SIDE = 160
RICH_FACTOR = 4  # identities with several distinct bases get up to this many x per_identity


@dataclass
class BaseFace:
    identity: str
    source: str  # file (and frame) the face came from
    crop: np.ndarray  # uint8 RGB crop_size²
    lms: np.ndarray  # 5x2 landmarks in crop pixels
    grey: bool = False


@dataclass
class Still:
    """A full frame with its face, for rendering demo videos."""

    identity: str
    image: np.ndarray
    box: tuple[float, float, float, float]
    lms: np.ndarray  # frame coordinates
    grey: bool = False


@dataclass
class Bases:
    faces: dict[str, list[BaseFace]] = field(default_factory=dict)
    stills: dict[str, Still] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add(self, face: BaseFace) -> None:
        self.faces.setdefault(face.identity, []).append(face)


def _crop_lms(face, crop_size: int) -> np.ndarray:
    x1, y1, x2, _ = face.crop_box
    return (np.asarray(face.landmarks, np.float64) - [x1, y1]) * (crop_size / (x2 - x1))


def _add_detected(bases: Bases, detector, identity: str, source: str, img: np.ndarray,
                  grey: bool = False) -> bool:
    faces = detector.detect([img])[0]
    if not faces:
        return False
    f = faces[0]
    bases.add(BaseFace(identity, source, f.crop, _crop_lms(f, detector.crop_size), grey))
    bases.stills.setdefault(identity, Still(identity, img, f.box, np.asarray(f.landmarks), grey))
    return True


def _skimage_file(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def load_pexels(bases: Bases, detector, path: Path, frames: int) -> None:
    from app.media import MediaLimits, open_media

    limits = MediaLimits(max_frames=frames, max_frames_cap=max(frames, 1))
    for f in open_media(path, limits, max_frames=frames):
        _add_detected(bases, detector, "pexels_woman", f"{path.name}@{f.source_index}", f.image)
    bases.used.append(path.name)


def load_lfw(bases: Bases, detector, people: int, crop_size: int) -> None:
    faces = np.load(_skimage_file("lfw_subset.npy"))[: min(people, 100)]  # 100 faces first
    imgs = [cv2.resize((g * 255).round().astype(np.uint8) if g.max() <= 1 else g.astype(np.uint8),
                       (LFW_SIDE, LFW_SIDE), interpolation=cv2.INTER_CUBIC) for g in faces]
    imgs = [np.repeat(g[..., None], 3, axis=2) for g in imgs]
    found = detector.detect(imgs)
    scale = crop_size / LFW_SIDE
    lms = [np.asarray(f[0].landmarks) * scale if f else None for f in found]
    got = [x for x in lms if x is not None]
    fallback = np.mean(got, axis=0) if got else canonical_landmarks(crop_size)
    for i, (img, pts) in enumerate(zip(imgs, lms, strict=True)):
        crop = cv2.resize(img, (crop_size, crop_size), interpolation=cv2.INTER_CUBIC)
        bases.add(BaseFace(f"lfw_{i:03d}", f"lfw_subset.npy#{i}", crop,
                           fallback if pts is None else pts, grey=True))
    bases.used.append(f"skimage/data/lfw_subset.npy[:{len(imgs)}]")


def load_bases(media_dir: Path, detector, crop_size: int, lfw_people: int,
               pexels_frames: int) -> Bases:
    """Every real base face we can find offline (missing media files are listed, not fatal)."""
    bases = Bases()
    if (media_dir / PEXELS).is_file() and pexels_frames > 0:
        load_pexels(bases, detector, media_dir / PEXELS, pexels_frames)
    elif pexels_frames > 0:
        bases.missing.append(PEXELS)
    for name, identity in PORTRAITS.items():
        path = media_dir / name
        if not path.is_file():
            bases.missing.append(name)
        elif _add_detected(bases, detector, identity, name, _read_rgb(path)):
            bases.used.append(name)
    for name, identity in (("astronaut.png", "astronaut"), ("camera.png", "cameraman")):
        img = _read_rgb(_skimage_file(name))
        grey = bool(np.ptp(img.astype(int), axis=2).max() == 0)
        if _add_detected(bases, detector, identity, f"skimage/{name}", img, grey):
            bases.used.append(f"skimage/data/{name}")
    if lfw_people > 0:
        load_lfw(bases, detector, lfw_people, crop_size)
    return bases


def assign_splits(identities: list[str], seed: int, val: float = 0.1,
                  test: float = 0.2) -> dict[str, str]:
    """Random identity split: ~``test`` and ~``val`` of them held out, at least one each."""
    if len(identities) < 3:
        raise ValueError(f"need at least 3 identities for train/val/test, got {len(identities)}")
    order = [identities[i] for i in np.random.default_rng(seed).permutation(len(identities))]
    n_test = max(1, round(test * len(order)))
    n_val = max(1, round(val * len(order)))
    return {ident: ("test" if k < n_test else "val" if k < n_test + n_val else "train")
            for k, ident in enumerate(order)}


def split_identities(identities: list[str], seed: int) -> dict[str, str]:
    """Split the named people and the LFW people separately, so held-out splits get colour
    faces too (not only grey 25 px LFW); a group too small to split stays in train."""
    lfw = [i for i in identities if i.startswith("lfw_")]
    named = [i for i in identities if not i.startswith("lfw_")]
    out: dict[str, str] = {}
    for group in (named, lfw):
        out.update(assign_splits(group, seed) if len(group) >= 3 else dict.fromkeys(group, "train"))
    return out


def make_sample(base: BaseFace, kind: str, partners: list[BaseFace],
                rng: np.random.Generator) -> tuple[np.ndarray, BaseFace | None, np.ndarray]:
    """One augmented crop: ``kind`` real | sbi | blend → (image, blend source or None,
    landmarks in crop pixels after the geometric augmentation).

    Compression and blur come *before* the blend, as in a face swap made from a compressed
    video: the stored reals are then exactly what the fakes were made from, so self-blending
    them again at training time (``online_sbi.py``) makes fakes like the stored ones.
    """
    img, lms = augment.geometry(base.crop, base.lms, rng)
    if not base.grey:
        img = augment.colour(img, rng)
    img = augment.quality(img, rng)
    partner = None
    if kind == "blend" and partners:
        partner = partners[int(rng.integers(len(partners)))]
        src = augment.to_grey(partner.crop) if base.grey else partner.crop
        img, _ = cross_blend(img, lms, src, partner.lms, rng)
    elif kind != "real":
        img, _ = self_blend(img, lms, rng)
    return (augment.to_grey(img) if base.grey else img), partner, lms


def _kinds(n_faces: int, per_identity: int) -> list[str]:
    """Sample kinds of one identity: n reals, then n/2 self-blends and n/2 cross-blends."""
    n = per_identity * min(RICH_FACTOR, n_faces)
    return ["real"] * n + ["sbi"] * (n - n // 2) + ["blend"] * (n // 2)


def _reset(out: Path, overwrite: bool) -> None:
    ours = ["crops", "videos", "index.jsonl", "sources.jsonl", "dataset.json"]
    present = [p for p in ours if (out / p).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({present}); pass overwrite=True")
    for p in present:
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()


def _write_samples(writer: CropWriter, bases: Bases, splits: dict[str, str], per_identity: int,
                   seed: int, tick: Callable[[], None]) -> None:
    idents = sorted(bases.faces)
    for ident_no, ident in enumerate(idents):
        faces, split = bases.faces[ident], splits[ident]
        grey = faces[0].grey
        # Blend sources: same split (no identity leak) and same colour mode (grey stays grey).
        partners = [f for other in idents if other != ident and splits[other] == split
                    and bases.faces[other][0].grey == grey for f in bases.faces[other][:4]]
        records = []
        for k, kind in enumerate(_kinds(len(faces), per_identity)):
            rng = np.random.default_rng([seed, ident_no, k])
            base = faces[k % len(faces)]
            img, partner, lms = make_sample(base, kind, partners, rng)
            method = "original" if kind == "real" else ("blend" if partner else "sbi")
            label = 0 if kind == "real" else 1
            rel = writer.crop_path(split, label, ident, k, 0)
            writer.write_crop(rel, img)
            ids = [ident] + ([partner.identity] if partner else [])
            # A fake's source differs from its real's, so grouping by source never mixes labels.
            source = base.source if label == 0 else f"{method}-{base.source}"
            records.append({"path": rel, "label": label, "split": split, "source": source,
                            "base": base.source, "identity": ident, "identities": ids,
                            "method": method, "frame": k, "timestamp": 0.0, "box": None,
                            "landmarks": np.round(lms, 1).tolist()})
            tick()
        writer.commit(records, {"source": ident, "split": split, "status": "ok",
                                "crops": len(records)})


def build_demo(
    out: Path,
    media_dir: Path,
    seed: int = 0,
    crop_size: int = 224,
    per_identity: int = 16,
    lfw_people: int = 100,
    pexels_frames: int = 32,
    n_videos: int = 4,
    video_frames: int = 24,
    overwrite: bool = False,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build the demo corpus at ``out`` (crop dataset + ``videos/``) → summary dict.

    Crops per identity: ``per_identity`` x min(4, distinct base faces) reals and as many fakes
    (~3,400 crops with the defaults; ~2 minutes on 2 CPU cores at 224 px).
    """
    from app.pipeline.faces import FaceDetector
    from app.training.videos import render_videos

    out, media_dir = Path(out), Path(media_dir)
    if per_identity < 2 or crop_size < 32:
        raise ValueError("per_identity must be >= 2 and crop_size >= 32")
    _reset(out, overwrite)
    detector = FaceDetector(device=device, max_faces=1, crop_size=crop_size)
    bases = load_bases(media_dir, detector, crop_size, lfw_people, pexels_frames)
    splits = split_identities(sorted(bases.faces), seed)
    total = sum(len(_kinds(len(f), per_identity)) for f in bases.faces.values()) + 2 * n_videos
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    writer = CropWriter(out)
    _write_samples(writer, bases, splits, per_identity, seed, tick)
    videos = render_videos(out / "videos", bases, splits, media_dir, n_videos, video_frames,
                           seed, detector, tick)
    meta = write_meta(out, {
        "kind": "demo", "layout": "demo", "seed": seed, "crop_size": crop_size,
        "per_identity": per_identity, "frames_per_video": None, "media_dir": str(media_dir),
        "media_used": bases.used, "media_missing": bases.missing, "licences": LICENCES,
        "identity_split": splits, "videos": videos, "complete": True,
    })
    by_split: dict[str, list[str]] = {}
    for ident, split in sorted(splits.items()):
        by_split.setdefault(split, []).append(ident)
    return {"out": str(out), "crops": meta["counts"]["total"], "counts": meta["counts"],
            "identities": {s: len(v) for s, v in by_split.items()}, "videos": videos,
            "media_missing": bases.missing}
