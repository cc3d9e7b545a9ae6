"""g on everyday media it never trained on: real faces, independent pastes, camera degradations.

Held-out identities of the demo corpus still share its sources, crop statistics and fake
recipe. This check takes photos from outside the corpus (any folder of images, or the demo
JPEG photos of the ``@vladmandic/face-api`` npm tarball: six group photos, 21 faces), and makes
**pastes** by a recipe training never used: a face of another photo is aligned onto the target
face by a similarity transform of the 5 MTCNN landmarks and Poisson-blended
(``cv2.seamlessClone``) inside an ellipse around eyes, nose and mouth; the target's own crop box
is then cut again, as the service would. Training's fakes are alpha blends (SBI, cross-identity).

Reported: AUC of g over real faces vs pastes, false-fake rate of the real faces at ``tau_fake``
(clean and under each camera-like degradation, also on the corpus' held-out test reals when a
crop dataset is given), and the share of pastes g misses.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from app.pipeline.faces import DetectedFace, FaceDetector, crop_face
from app.training.camera import DEGRADATIONS
from app.training.common import to_tensor
from app.training.metrics import binary_metrics, safe_auc

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PHOTO_SUFFIXES = (".jpg", ".jpeg")
SOURCES_PER_TARGET = 3
MIN_FACE_SIDE = 64  # pastes need landmarks good enough to align; smaller faces are skipped


@dataclass
class Face:
    image: str
    frame: np.ndarray
    det: DetectedFace


def load_images(source: Path) -> list[tuple[str, np.ndarray]]:
    """RGB images of a folder, or of ``package/demo/`` inside an npm tarball."""
    source = Path(source)
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            # Photos only: face-api's demo/ also holds PNG screenshots of its own UI.
            members = sorted((m for m in tar.getmembers() if m.isfile()
                              and "/demo/" in m.name and m.name.lower().endswith(PHOTO_SUFFIXES)),
                             key=lambda m: m.name)
            raw = [(Path(m.name).name, tar.extractfile(m).read()) for m in members]  # type: ignore[union-attr]
    elif source.is_dir():
        raw = [(p.name, p.read_bytes()) for p in sorted(source.iterdir())
               if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        raise FileNotFoundError(f"{source}: give a folder of images or an npm tarball with demo/")
    out = []
    for name, data in raw:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append((name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    if not out:
        raise ValueError(f"{source}: no readable images")
    return out


def find_faces(images: list[tuple[str, np.ndarray]], crop_size: int) -> list[Face]:
    det = FaceDetector(device="cpu", max_faces=32, crop_size=crop_size, min_face_size=40)
    faces = []
    for name, rgb in images:
        faces += [Face(name, rgb, f) for f in det.detect([rgb])[0]
                  if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= MIN_FACE_SIDE]
    return faces


def paste(target: Face, source: Face) -> np.ndarray | None:
    """``source``'s face Poisson-blended onto ``target``'s frame; None if it cannot align."""
    src_pts = np.float32(source.det.landmarks)
    dst_pts = np.float32(target.det.landmarks)
    m, _ = cv2.estimateAffinePartial2D(src_pts, dst_pts)
    if m is None:
        return None
    h, w = target.frame.shape[:2]
    warped = cv2.warpAffine(source.frame, m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    mask = _face_ellipse(dst_pts, (h, w))
    ys, xs = np.nonzero(mask)
    if xs.size == 0 or xs.min() < 1 or ys.min() < 1 or xs.max() >= w - 1 or ys.max() >= h - 1:
        return None  # seamlessClone needs the mask strictly inside the frame
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    return cv2.seamlessClone(warped, target.frame, mask, centre, cv2.NORMAL_CLONE)


def _face_ellipse(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Ellipse over eyes, nose and mouth from the 5 landmarks (no forehead, no jaw line)."""
    eyes, mouth = pts[:2].mean(0), pts[3:].mean(0)
    eye_dist = float(np.linalg.norm(pts[1] - pts[0]))
    centre = (eyes + mouth) / 2
    angle = float(np.degrees(np.arctan2(*(pts[1] - pts[0])[::-1])))
    axes = (int(eye_dist * 0.95), int(max(np.linalg.norm(mouth - eyes), 1) * 1.15))
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), axes, angle, 0, 360, 255, -1)
    return mask


def paste_crops(faces: list[Face], crop_size: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``SOURCES_PER_TARGET`` pastes per face, sources drawn from *other* photos."""
    rng = np.random.default_rng(seed)
    crops = []
    for t in faces:
        others = [f for f in faces if f.image != t.image]
        for k in rng.permutation(len(others))[:SOURCES_PER_TARGET]:
            blended = paste(t, others[int(k)])
            if blended is not None:
                crops.append(crop_face(blended, t.det.crop_box, crop_size))
    return crops


# ------------------------------------------------------------------------------ scoring


@torch.no_grad()
def p_fake(g: nn.Module, crops: list[np.ndarray], batch: int = 32) -> np.ndarray:
    g.eval()
    out = []
    for i in range(0, len(crops), batch):
        x = torch.stack([to_tensor(c) for c in crops[i:i + batch]])
        out.append(g(x).float().softmax(1)[:, 1])
    return torch.cat(out).numpy() if out else np.zeros(0)


def _false_fake(p: np.ndarray, tau: float) -> float | None:
    return float((p >= tau).mean()) if p.size else None


def degraded_rates(g: nn.Module, reals: list[np.ndarray], tau: float, seed: int = 0
                   ) -> dict[str, float | None]:
    rng = np.random.default_rng(seed)
    return {name: _false_fake(p_fake(g, [fn(c, rng) for c in reals]), tau)
            for name, fn in DEGRADATIONS.items()}


def realworld(
    g: nn.Module, tau: float, source: Path, held_out_reals: list[np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of this module's docstring, as one JSON-able dict."""
    size = g.input_size
    faces = find_faces(load_images(source), size)
    if len(faces) < 2:
        raise ValueError(f"{source}: found {len(faces)} usable faces; need at least 2")
    reals = [f.det.crop for f in faces]
    pastes = paste_crops(faces, size, seed)
    pr, pp = p_fake(g, reals), p_fake(g, pastes)
    y = np.r_[np.zeros(len(pr)), np.ones(len(pp))]
    out: dict[str, Any] = {
        "source": str(source), "images": len({f.image for f in faces}), "real_faces": len(reals),
        "pastes": len(pastes), "tau_fake": tau, "auc": safe_auc(y, np.r_[pr, pp]),
        "at_tau": binary_metrics(y, np.r_[pr, pp], tau),
        "false_fake_real": _false_fake(pr, tau), "miss_paste": 1.0 - float((pp >= tau).mean())
        if pp.size else None,
        "false_fake_degraded": degraded_rates(g, reals, tau, seed),
    }
    if held_out_reals:
        out["held_out_reals"] = len(held_out_reals)
        out["false_fake_held_out"] = _false_fake(p_fake(g, held_out_reals), tau)
        out["false_fake_held_out_degraded"] = degraded_rates(g, held_out_reals, tau, seed)
    return out


def held_out_reals(data_root: Path, split: str = "test") -> list[np.ndarray]:
    """The real crops of one split of a crop dataset (identities g never trained on)."""
    from app.training.common import read_rgb
    from app.training.data import read_index

    return [read_rgb(Path(data_root) / r["path"]) for r in read_index(Path(data_root))
            if r["split"] == split and r["label"] == 0]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def to_markdown(res: dict[str, Any], detector: str) -> str:
    """The figures as a short Markdown report."""
    lines = [f"# g on media outside the training corpus — {detector}", "",
             f"Source: `{Path(res['source']).name}`: {res['images']} photos, "
             f"{res['real_faces']} real faces (≥ {MIN_FACE_SIDE} px), {res['pastes']} Poisson "
             f"pastes from other photos; tau_fake = {res['tau_fake']:.3f}.", "",
             "| measure | value |", "|---|---|",
             f"| AUC real faces vs pastes | {res['auc']:.3f} |",
             f"| real faces called fake at tau_fake | {_pct(res['false_fake_real'])} |",
             f"| pastes missed at tau_fake | {_pct(res['miss_paste'])} |"]
    if "false_fake_held_out" in res:
        lines.append(f"| held-out corpus reals called fake ({res['held_out_reals']}) | "
                     f"{_pct(res['false_fake_held_out'])} |")
    lines += ["", "False-fake rate under camera-like degradations:", "",
              "| degradation | outside faces | held-out corpus reals |", "|---|---|---|"]
    held = res.get("false_fake_held_out_degraded", {})
    for name, v in res["false_fake_degraded"].items():
        lines.append(f"| {name} | {_pct(v)} | {_pct(held.get(name))} |")
    return "\n".join(lines) + "\n"
