"""``dfshield protect evaluate``: the issue's figures on held-out photos, one CSV row per face.

Photos: people no generator was trained on (the face-api demo photos, ``grace_hopper.jpg`` of
the corpus's test split). Per face, mode and eps: PSNR/SSIM of the crop region, L2_mask and
success on the bundled and the held-out generator, the same after a JPEG-90 round trip of the
protected photo (reference: the generator's output on the JPEG-90 *original*, so only the
protection's effect counts), and whether MTCNN / the cascade still find the face at IoU >= 0.7.
Rates carry bootstrap 95 % CIs over faces.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.protect.detectors import cascade_boxes, mtcnn_boxes
from app.protect.generators import FaceGenerator
from app.protect.interrupt import FEATURE_WEIGHT
from app.protect.metrics import found
from app.protect.protector import ProtectOptions, Protector, generator_effects

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    modes: tuple[str, ...] = ("interrupt", "tsdf")
    eps: tuple[float, ...] = (0.025, 0.05)
    steps: int = 100
    poison_steps: int = 100
    seed: int = 0
    max_faces_per_photo: int = 5
    save_dir: Path | None = None  # protected PNGs kept for the persistence protocol
    purifier_eot: bool = False  # stage 1 through the protector's learned purifier too
    hf_weight: float = 0.0
    feature_weight: float = FEATURE_WEIGHT


def jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def face_rows(protector: Protector, held_out: Sequence[FaceGenerator], name: str,
              rgb: np.ndarray, mode: str, eps: float, cfg: EvalConfig) -> list[dict[str, Any]]:
    opts = ProtectOptions(mode=mode, eps=eps, steps=cfg.steps,  # type: ignore[arg-type]
                          poison_steps=cfg.poison_steps, seed=cfg.seed,
                          purifier_eot=cfg.purifier_eot, hf_weight=cfg.hf_weight,
                          feature_weight=cfg.feature_weight)
    t0 = time.monotonic()
    result = protector.protect(rgb, opts)
    seconds = time.monotonic() - t0
    prot, orig_j, prot_j = result.protected, jpeg(rgb), jpeg(result.protected)
    if cfg.save_dir is not None:
        cfg.save_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(prot).save(cfg.save_dir / f"{mode}_{eps:g}_{Path(name).stem}.png")
    after_j = [b for b, _ in mtcnn_boxes(protector.faces, prot_j)]
    casc_j = cascade_boxes(prot_j)
    rows = []
    for k, face in enumerate(result.report.faces):
        row: dict[str, Any] = {
            "photo": name, "face": k, "mode": mode, "eps": eps, "seconds_photo": round(seconds, 2),
            "psnr_db": face.psnr_db, "ssim": face.ssim, "mtcnn_found": face.mtcnn_found_after,
            "mtcnn_found_jpeg90": found(face.box, after_j),
            "cascade_before": face.haar_found_before, "cascade_found": face.haar_found_after,
            "cascade_found_jpeg90": any(found(b, casc_j) for b in cascade_boxes(rgb)
                                        if found(face.box, [b], 0.3)),
        }
        gens = [*protector.generators, *held_out]
        for tag, (a, b) in {"": (rgb, prot), "_jpeg90": (orig_j, prot_j)}.items():
            for g, eff in zip(gens, generator_effects(gens, a, b, face.crop_box), strict=True):
                kind = "bundled" if g in protector.generators else "heldout"
                row[f"l2_{kind}{tag}"] = eff.l2_mask
                row[f"success_{kind}{tag}"] = eff.success
        rows.append(row)
    return rows


def bootstrap_ci(values: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), (n, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def evaluate(protector: Protector, held_out: Sequence[FaceGenerator],
             photos: Sequence[tuple[str, np.ndarray]], cfg: EvalConfig,
             progress: Progress | None = None) -> list[dict[str, Any]]:
    runs = [(m, e) for e in cfg.eps for m in cfg.modes]
    rows: list[dict[str, Any]] = []
    for i, (mode, eps) in enumerate(runs):
        for j, (name, rgb) in enumerate(photos):
            rows += face_rows(protector, held_out, name, rgb, mode, eps, cfg)
            if cfg.save_dir is not None:  # partial results survive an interrupted run
                write_csv(cfg.save_dir / "faces.partial.csv", rows)
            if progress:
                progress(i * len(photos) + j + 1, len(runs) * len(photos))
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (mode, eps): means and rates with bootstrap CIs."""
    out = []
    for key in sorted({(r["mode"], r["eps"]) for r in rows}, key=lambda k: (k[1], k[0])):
        sel = [r for r in rows if (r["mode"], r["eps"]) == key]
        line: dict[str, Any] = {"mode": key[0], "eps": key[1], "faces": len(sel),
                                "photos": len({r["photo"] for r in sel}),
                                "psnr_db": float(np.mean([r["psnr_db"] for r in sel])),
                                "psnr_min": float(np.min([r["psnr_db"] for r in sel])),
                                "ssim": float(np.mean([r["ssim"] for r in sel])),
                                "ssim_min": float(np.min([r["ssim"] for r in sel]))}
        for col in ("success_bundled", "success_heldout", "success_bundled_jpeg90",
                    "success_heldout_jpeg90", "mtcnn_found", "mtcnn_found_jpeg90"):
            vals = [float(r[col]) for r in sel]
            line[col] = (float(np.mean(vals)), *bootstrap_ci(vals))
        casc = [float(r["cascade_found"]) for r in sel if r["cascade_before"]]
        line["cascade_found"] = (float(np.mean(casc)) if casc else float("nan"),
                                 *bootstrap_ci(casc))
        line["cascade_faces"] = len(casc)
        line["l2_bundled"] = float(np.mean([r["l2_bundled"] for r in sel]))
        line["l2_heldout"] = float(np.mean([r["l2_heldout"] for r in sel]))
        line["seconds_photo"] = float(np.mean([r["seconds_photo"] for r in sel]))
        out.append(line)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
