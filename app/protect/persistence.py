"""The persistence protocol (TSDF): does the protection survive the attacker retraining on it?

The attacker collects the protected photos, runs detect-and-crop with their face detector
(faces it misses, or boxes at IoU < 0.7 to the true face, yield no usable crop: a mis-boxed
crop is kept, as an attacker would, but it is not the face), fine-tunes the bundled generator
for K steps on what survived (the shared encoder and a decoder for the victims, while the swap
identity's decoder keeps training on its own faces, as in face-swap training), then swaps the
protected faces again. Success is then measured as before (L2_mask > 0.05 between the retrained
generator's outputs on the protected and on the original crop, on the true crop box).

Conditions: no defence (the attacker's crops are clean), interruption only, TSDF; croppers:
MTCNN (the white-box target of stage 2), the LBP cascade (black box) and an oracle that uses
the ground-truth boxes, which must cancel stage 2's advantage.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.pipeline.faces import FaceDetector, square_crop_box
from app.protect.detectors import cascade_boxes, mtcnn_boxes
from app.protect.evaluate import bootstrap_ci
from app.protect.generators import FaceGenerator
from app.protect.protector import generator_effects, to_tensor
from app.protect.train_generator import GeneratorTrainConfig, load_identity_faces, train_steps

Cropper = Callable[[np.ndarray, list[tuple[float, ...]]], list[tuple[int, int, int, int]]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Victim:
    """One face of a photo: its true MTCNN box and 1.3x crop box on the original."""

    photo: str
    original: np.ndarray
    box: tuple[float, ...]
    crop_box: tuple[int, int, int, int]


def crops_for(rgb: np.ndarray, truth: list[tuple[float, ...]], cropper: str,
              detector: FaceDetector) -> list[tuple[int, int, int, int]]:
    """The crop boxes the attacker's cropper yields on one (protected) photo."""
    h, w = rgb.shape[:2]
    if cropper == "oracle":
        boxes = truth
    elif cropper == "mtcnn":
        boxes = [b for b, _ in mtcnn_boxes(detector, rgb)]
    elif cropper == "cascade":
        boxes = cascade_boxes(rgb)
    else:
        raise ValueError(f"unknown cropper {cropper!r}: mtcnn | cascade | oracle")
    return [square_crop_box(b, w, h, detector.scale) for b in boxes]


def attacker_dataset(photos: dict[str, np.ndarray], victims: Sequence[Victim], cropper: str,
                     detector: FaceDetector) -> tuple[torch.Tensor, dict[str, int]]:
    """64 px crops the attacker collects, and how many faces were found at IoU >= 0.7."""
    from app.pipeline.tracks import iou
    from app.protect.crop import crop_resize

    crops, found = [], 0
    by_photo: dict[str, list[Victim]] = {}
    for v in victims:
        by_photo.setdefault(v.photo, []).append(v)
    for name, vs in by_photo.items():
        rgb = photos[name]
        boxes = crops_for(rgb, [v.box for v in vs], cropper, detector)
        found += sum(any(iou(v.crop_box, b) >= 0.7 for b in boxes) for v in vs)
        crops += [crop_resize(to_tensor(rgb), b, 64) for b in boxes]
    data = torch.cat(crops) if crops else torch.zeros(0, 3, 64, 64)
    return data, {"crops": len(crops), "faces_found": found, "faces": len(victims)}


def retrain(gen: FaceGenerator, victim_crops: torch.Tensor, swap_faces: torch.Tensor,
            steps: int, seed: int) -> FaceGenerator:
    """K fine-tuning steps: victims → decoder 1 (a victim decoder), swap identity → decoder 0."""
    g = copy.deepcopy(gen)
    for p in g.parameters():
        p.requires_grad_(True)
    cfg = GeneratorTrainConfig(data_root=None, batch_per_identity=8,  # type: ignore[arg-type]
                               lr=2e-4, seed=seed)
    pools: list[torch.Tensor | None] = [swap_faces, victim_crops if len(victim_crops) else None]
    if pools[1] is not None:
        train_steps(g, pools, steps, cfg, torch.Generator().manual_seed(seed))
    for p in g.parameters():
        p.requires_grad_(False)
    return g.eval()


def success_after(gen: FaceGenerator, photos: dict[str, np.ndarray],
                  victims: Sequence[Victim]) -> list[float]:
    return [float(generator_effects([gen], v.original, photos[v.photo], v.crop_box)[0].success)
            for v in victims]


def run_protocol(gen: FaceGenerator, protected: dict[str, dict[str, np.ndarray]],
                 victims: Sequence[Victim], detector: FaceDetector, data_root: Any,
                 steps: int, croppers: Sequence[str] = ("mtcnn", "cascade", "oracle"),
                 seed: int = 0, progress: Progress | None = None) -> list[dict[str, Any]]:
    """``protected[condition][photo]`` → one row per (condition, cropper) with success rates
    before and after retraining, per face."""
    swap_faces = load_identity_faces(data_root, ("obama",))[0]
    rows, total, k = [], len(protected) * len(croppers), 0
    for cond, photos in protected.items():
        before = success_after(gen, photos, victims)
        for cropper in croppers:
            if cond == "none":  # clean photos: nothing to measure but what the cropper keeps
                counts = attacker_dataset(photos, victims, cropper, detector)[1]
                rows.append({"condition": cond, "cropper": cropper, **counts, "steps": 0,
                             "success_before": before, "success_after": before})
                continue
            crops, counts = attacker_dataset(photos, victims, cropper, detector)
            g2 = retrain(gen, crops, swap_faces, steps, seed)
            after = success_after(g2, photos, victims)
            rows.append({"condition": cond, "cropper": cropper, **counts, "steps": steps,
                         "success_before": before, "success_after": after})
            k += 1
            if progress:
                progress(k, total)
    return rows


def paired_margin_ci(a: Sequence[float], b: Sequence[float], n: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the same faces with a bootstrap 95 % CI (faces resampled)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    lo, hi = bootstrap_ci(diff.tolist(), n, seed)
    return float(diff.mean()), lo, hi
