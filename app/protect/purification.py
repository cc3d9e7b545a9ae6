"""Purification resistance (AntiPure's concern, reduced): does the protection survive the
attacker cleaning the photo first? Fixed purifiers (JPEG 75/90, resize to 0.5x and back,
Gaussian blur) and, when the model store has one (role ``purifier``), the learned denoiser
trained here (``dfshield train denoiser``, :mod:`app.protect.denoiser`), run on the whole photo.

Reference for each purifier: the generator's output on the *purified original*, so that what
is measured is the protection left after purification, not the purifier's own change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.pipeline.faces import FaceDetector
from app.protect.detectors import mtcnn_boxes
from app.protect.evaluate import bootstrap_ci, jpeg
from app.protect.generators import FaceGenerator
from app.protect.metrics import found
from app.protect.persistence import Victim
from app.protect.protector import generator_effects

Purifier = Callable[[np.ndarray], np.ndarray]


def _resize_half(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


PURIFIERS: dict[str, Purifier] = {
    "none": lambda x: x,
    "jpeg90": lambda x: jpeg(x, 90),
    "jpeg75": lambda x: jpeg(x, 75),
    "resize0.5": _resize_half,
    "blur1": lambda x: cv2.GaussianBlur(x, (0, 0), 1.0),
}


def purifiers_for(models_dir: Path | None) -> dict[str, Purifier]:
    """The fixed purifiers, plus ``denoiser`` when ``models_dir`` lists a learned one."""
    from app.protect.denoiser import load_denoiser

    denoiser = load_denoiser(models_dir) if models_dir is not None else None
    if denoiser is None:
        return dict(PURIFIERS)
    return {**PURIFIERS, "denoiser": denoiser.purify_rgb}


def purification_rows(gens: Sequence[FaceGenerator], detector: FaceDetector,
                      protected: dict[str, dict[str, np.ndarray]],
                      victims: Sequence[Victim],
                      purifiers: dict[str, Purifier] | None = None) -> list[dict[str, Any]]:
    rows = []
    purifiers = PURIFIERS if purifiers is None else purifiers
    # Originals are purified once per purifier (the learned one takes seconds a photo).
    originals = {v.photo: v.original for v in victims}
    clean_by = {pname: {k: purify(rgb) for k, rgb in originals.items()}
                for pname, purify in purifiers.items()}
    for cond, photos in protected.items():
        for pname, purify in purifiers.items():
            clean_p = clean_by[pname]
            prot_p = {name: purify(rgb) for name, rgb in photos.items()}
            dets = {name: [b for b, _ in mtcnn_boxes(detector, rgb)]
                    for name, rgb in prot_p.items()}
            for v in victims:
                effects = generator_effects(gens, clean_p[v.photo], prot_p[v.photo], v.crop_box)
                rows.append({"condition": cond, "purifier": pname, "photo": v.photo,
                             **{f"success_{g.name}": e.success
                                for g, e in zip(gens, effects, strict=True)},
                             "mtcnn_found": found(v.box, dets[v.photo])})
    return rows


def to_markdown(rows: list[dict[str, Any]], eps: float, gens: Sequence[str]) -> str:
    cols = [f"success_{g}" for g in gens] + ["mtcnn_found"]
    lines = [f"# Purification (eps {eps:g})", "",
             "Success = L2_mask > 0.05 against the generator's output on the equally purified "
             "original; MTCNN recall at IoU >= 0.7. Bootstrap 95 % CIs over faces.", "",
             "| condition | purifier | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    order = list(dict.fromkeys(r["purifier"] for r in rows))  # as evaluated
    keys = sorted({(r["condition"], r["purifier"]) for r in rows},
                  key=lambda k: (k[0], order.index(k[1])))
    for cond, pur in keys:
        sel = [r for r in rows if (r["condition"], r["purifier"]) == (cond, pur)]
        cells = []
        for c in cols:
            vals = [float(r[c]) for r in sel]
            lo, hi = bootstrap_ci(vals)
            cells.append(f"{np.mean(vals):.0%} [{lo:.0%}, {hi:.0%}]")
        lines.append(f"| {cond} | {pur} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
