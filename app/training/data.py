"""Face-crop datasets on disk: the format, a torch loader, and ``prepare`` from video datasets.

Layout of a crop dataset folder (``prepare`` and the demo builder both write it)::

    crops/<split>/<real|fake>/<source_id>_<frame>_<face>.png   RGB PNG, crop_size x crop_size
    index.jsonl     one JSON object per crop: path (relative), label (0 real, 1 fake), split,
                    source, identity, identities, method, frame, timestamp, box, landmarks
    sources.jsonl   one line per processed source (ok / no_face / error): the resume ledger
    dataset.json    provenance: source, layout, seed, splits, frames_per_video, crop_size,
                    counts per split/label/method, dropped cross-split fakes, created/updated

``landmarks`` are the 5 MTCNN points in crop pixel coordinates (for self-blending later).
Splits are decided per *identity* by hashing it with the seed, so they are stable when sources
are added and no person appears in two splits. Source discovery lives in ``sources.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from app.training.sources import (
    SPLITS,
    Source,
    detect_layout,
    discover_ffpp,
    discover_folders,
    split_for,
)

Progress = Callable[[int, int], None]
Layout = Literal["auto", "ffpp", "folders"]
FORMAT = "dfshield-crops/1"
LABEL_DIRS = {0: "real", 1: "fake"}
INDEX, LEDGER, META = "index.jsonl", "sources.jsonl", "dataset.json"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- reading


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_index(root: Path) -> list[dict[str, Any]]:
    """Every crop record of the dataset at ``root`` (empty when there is none yet)."""
    return _read_jsonl(Path(root) / INDEX)


def read_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class CropDataset(Dataset):
    """Crops of one split → ``(float tensor [3,H,W] in [0,1], label)``; ``transform`` (optional)
    is applied to the tensor."""

    def __init__(
        self,
        root: Path,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.records = [r for r in read_index(self.root) if r["split"] == split]
        self.labels = [int(r["label"]) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb = load_rgb(self.root / self.records[i]["path"])
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


# ---------------------------------------------------------------- writing


class CropWriter:
    """Writes crops + index lines + the resume ledger; a source's lines are appended together
    after its PNGs exist, so an interrupted run leaves no index line without its file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def crop_path(self, split: str, label: int, source_id: str, frame: int, face: int) -> str:
        return f"crops/{split}/{LABEL_DIRS[label]}/{source_id}_{frame}_{face}.png"

    def write_crop(self, rel: str, rgb: np.ndarray) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")

    def commit(self, records: Iterable[dict[str, Any]], ledger: dict[str, Any] | None = None):
        _append_jsonl(self.root / INDEX, records)
        if ledger is not None:
            _append_jsonl(self.root / LEDGER, [ledger])

    def done_sources(self) -> set[str]:
        done = {r["source"] for r in read_index(self.root)}
        return done | {r["source"] for r in _read_jsonl(self.root / LEDGER)}


def _append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in records]
    if lines:
        with path.open("a", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()


def count_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per split x label, per split x method, and identities per split."""
    split_label = {s: {"real": 0, "fake": 0} for s in SPLITS}
    split_method: dict[str, Counter] = {s: Counter() for s in SPLITS}
    idents: dict[str, set[str]] = {s: set() for s in SPLITS}
    for r in records:
        split_label[r["split"]][LABEL_DIRS[int(r["label"])]] += 1
        split_method[r["split"]][r["method"]] += 1
        idents[r["split"]].update(r.get("identities") or [r["identity"]])
    return {
        "total": len(records),
        "split_label": split_label,
        "split_method": {s: dict(sorted(c.items())) for s, c in split_method.items()},
        "identities": {s: len(v) for s, v in idents.items()},
    }


def write_meta(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Merge ``meta`` into dataset.json, refresh counts from the index, stamp the time."""
    root = Path(root)
    full = {"format": FORMAT, "created": now(), **read_meta(root), **meta}
    full["updated"] = now()
    full["counts"] = count_records(read_index(root))
    (root / META).write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
    return full


def _check_resume(root: Path, params: dict[str, Any]) -> None:
    old = read_meta(root)
    clash = {k: (old[k], v) for k, v in params.items() if k in old and old[k] != v}
    if clash:
        raise ValueError(
            f"{root} was prepared with different settings {clash} (old, new); "
            "use a new output folder or the original settings to resume"
        )


# ---------------------------------------------------------------- prepare


def _limits(frames_per_video: int):
    from app.media import MediaLimits

    # Training data is trusted and can be long or large: the caps are only a safety net here.
    return MediaLimits(
        max_video_seconds=24 * 3600.0,
        max_frames=frames_per_video,
        max_frames_cap=frames_per_video,
        max_width=8192,
        max_height=8192,
        max_image_pixels=200_000_000,
    )


def extract_source(
    src: Source, split: str, detector, limits, frames_per_video: int, writer: CropWriter
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample frames, keep the largest face per frame, write its crop → (records, ledger)."""
    from app.media import MediaError, open_media

    ledger: dict[str, Any] = {"source": src.source_id, "path": str(src.path), "split": split}
    try:
        frames = list(open_media(src.path, limits, max_frames=frames_per_video))
    except MediaError as exc:
        return [], {**ledger, "status": "error", "error": f"{exc.code}: {exc.message}"}
    except OSError as exc:
        return [], {**ledger, "status": "error", "error": f"os_error: {exc}"}
    detected = detector.detect([f.image for f in frames]) if frames else []
    records = []
    for frame, faces in zip(frames, detected, strict=True):
        if not faces:
            continue
        face = faces[0]  # largest: the detector ranks by area
        number = frame.source_index if frame.source_index is not None else frame.index
        rel = writer.crop_path(split, src.label, src.source_id, number, 0)
        writer.write_crop(rel, face.crop)
        x1, y1, x2, _ = face.crop_box
        s = face.crop.shape[1] / max(x2 - x1, 1)
        lms = [[round((x - x1) * s, 1), round((y - y1) * s, 1)] for x, y in face.landmarks]
        records.append(
            {
                "path": rel,
                "label": src.label,
                "split": split,
                "source": src.source_id,
                "source_path": str(src.rel_path),
                "identity": src.identity,
                "identities": list(src.identities),
                "method": src.method,
                "frame": number,
                "timestamp": round(frame.timestamp, 3),
                "box": [round(v, 1) for v in face.box],
                "crop_box": list(face.crop_box),
                "prob": round(face.prob, 4),
                "landmarks": lms,
            }
        )
    status = "ok" if records else "no_face"
    return records, {**ledger, "status": status, "crops": len(records)}


def prepare(
    source: Path,
    out: Path,
    layout: Layout = "auto",
    frames_per_video: int = 16,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    crop_size: int = 224,
    compression: str = "c23",
    methods: list[str] | None = None,
    progress: Progress | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Crop dataset at ``out`` from an FF++ tree or ``real/`` + ``fake/`` folders; resumable.

    FF++: ``original_sequences/youtube/<compression>/videos/<id>.mp4`` (real) and
    ``manipulated_sequences/<method>/<compression>/videos/<target>_<source>.mp4`` (fake);
    splits over the original ids, and a fake whose two ids fall in different splits is dropped.
    Folders: ``real/`` and ``fake/`` (recursive, videos and images); identity = the first
    subfolder (``real/<identity>/*.mp4``) or else the file stem. Returns a summary dict.
    """
    from app.pipeline.faces import FaceDetector

    source, out = Path(source), Path(out)
    if frames_per_video < 1 or crop_size < 16:
        raise ValueError("frames_per_video must be >= 1 and crop_size >= 16")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions summing to 1, got {splits}")
    kind = detect_layout(source) if layout == "auto" else layout
    if kind == "ffpp":
        found, skipped = discover_ffpp(source, compression, methods)
    elif kind == "folders":
        found, skipped = discover_folders(source)
    else:
        raise ValueError(f"layout must be auto, ffpp or folders, got {layout!r}")
    params = {
        "seed": seed,
        "splits": list(splits),
        "crop_size": crop_size,
        "frames_per_video": frames_per_video,
        "layout": kind,
    }
    _check_resume(out, params)
    writer = CropWriter(out)
    write_meta(out, {**params, "source": str(source.resolve()), "complete": False,
                     "compression": compression if kind == "ffpp" else None,
                     "methods": sorted({s.method for s in found})})
    done = writer.done_sources()
    detector = FaceDetector(device=device, max_faces=1, crop_size=crop_size)
    limits = _limits(frames_per_video)
    stats = Counter()
    for i, src in enumerate(found):
        split = split_for(src.identities, seed, splits)
        if split is None:
            stats["dropped_cross_split"] += 1
        elif src.source_id in done:
            stats["skipped_existing"] += 1
        else:
            records, ledger = extract_source(src, split, detector, limits, frames_per_video,
                                             writer)
            writer.commit(records, ledger)
            stats[ledger["status"]] += 1
            stats["added_crops"] += len(records)
        if progress:
            progress(i + 1, len(found))
    meta = write_meta(out, {"complete": True, "dropped_cross_split": stats["dropped_cross_split"],
                            "unparsed_files": skipped})
    return {
        "out": str(out),
        "layout": kind,
        "sources": len(found),
        "processed": stats["ok"] + stats["no_face"] + stats["error"],
        "no_face": stats["no_face"],
        "failed": stats["error"],
        "skipped_existing": stats["skipped_existing"],
        "dropped_cross_split": stats["dropped_cross_split"],
        "unparsed_files": skipped,
        "added_crops": stats["added_crops"],
        "counts": meta["counts"],
    }


def add_self_blends(
    root: Path, per_real: int = 1, seed: int = 0, progress: Progress | None = None
) -> dict[str, Any]:
    """Self-blended fakes (method "sbi") from every real crop with landmarks, in its split and
    with its identity. Resumable: reals that already have blends are skipped."""
    from app.training.sbi import self_blend

    root = Path(root)
    rows = read_index(root)
    done = {r.get("base") for r in rows if r["method"] == "sbi"}
    reals = [r for r in rows if r["label"] == 0 and r.get("landmarks") and r["path"] not in done]
    writer = CropWriter(root)
    for i, r in enumerate(reals):
        img = load_rgb(root / r["path"])
        key = int.from_bytes(hashlib.sha256(r["path"].encode()).digest()[:8], "big")
        records = []
        for k in range(per_real):
            fake, _ = self_blend(img, r["landmarks"], np.random.default_rng([seed, key, k]))
            source = f"sbi-{r['source']}"
            rel = writer.crop_path(r["split"], 1, source, r["frame"], k)
            writer.write_crop(rel, fake)
            records.append({**r, "path": rel, "label": 1, "method": "sbi", "source": source,
                            "base": r["path"]})
        writer.commit(records)
        if progress:
            progress(i + 1, len(reals))
    meta = write_meta(root, {"self_blends": {"per_real": per_real, "seed": seed}})
    return {"added": len(reals) * per_real, "skipped_existing": len(done - {None}),
            "counts": meta["counts"]}
