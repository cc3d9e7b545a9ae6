"""``dfshield redteam``: attack whole images, upload them to a running service, count what
got through.

Per input image: find faces with the service's face detector (MTCNN, 1.3× square crops),
score each with g, attack every judgeable face g calls fake (``attack.attack_image``, one run
per variant), save each result as PNG and as JPEG-90, upload both through POST /v1/analyze,
poll until done and compare the service's face verdicts with what was attacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from app.config import Settings
from app.media import MediaLimits, open_media
from app.media.errors import MediaError, UnsupportedMedia
from app.pipeline.faces import DetectedFace, FaceDetector
from app.pipeline.tracks import iou
from app.redteam import CONTROL, Variant
from app.redteam.attack import AttackConfig, ImageAttack, attack_image
from app.redteam.client import ServiceClient, ServiceError
from app.redteam.report import (
    FaceOutcome,
    ImageReport,
    RedteamReport,
    UploadReport,
    VariantInfo,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
JPEG_QUALITY = 90
MIN_IOU = 0.5  # a service face is "the same face" when its box overlaps the attacked one this much
Progress = Callable[[str], None]


@dataclass
class TargetModel:
    """The g being attacked, and the tau_fake the service is expected to judge with."""

    g: nn.Module
    name: str
    tau_fake: float


def load_target(detector: str | None, models_dir: Path, device: torch.device) -> TargetModel:
    """A run dir of ``dfshield train detector``, a model-store entry name, or (None) the store's
    served default detector: what ``Analyzer.from_settings`` loads."""
    if detector is not None and Path(detector).is_dir():
        from app.training.common import load_trained

        model, record = load_trained(Path(detector), device)
        tau = float((record.get("thresholds") or {}).get("tau_fake", 0.5))
        return TargetModel(model, str(detector), tau)
    from app.models.store import ModelStoreError, load_manifest, load_model

    manifest = load_manifest(models_dir)
    name = detector or manifest.default.detector
    entry = manifest.find(name) if name else None
    if entry is None or entry.role != "detector":
        raise ModelStoreError(f"{name!r} is neither a run dir nor a detector in {models_dir}; "
                              "see `dfshield models list`")
    return TargetModel(load_model(models_dir, entry, device), entry.name, entry.threshold)


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(f for f in p.iterdir()
                            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return found


@dataclass
class RedteamOptions:
    out_dir: Path
    variants: tuple[Variant, ...] = ("pgd", "eot")
    attack: AttackConfig = field(default_factory=AttackConfig)
    tau_fake: float | None = None  # None: the target model's own
    analysis_timeout_s: float = 300.0
    control: bool = True  # also upload the unattacked image in the same formats


class Redteam:
    """One run: a g, the service's face detector, a client of the service under test."""

    def __init__(self, target: TargetModel, faces: FaceDetector, client: ServiceClient,
                 opts: RedteamOptions, settings: Settings,
                 progress: Progress | None = None) -> None:
        self.target, self.faces, self.client, self.opts = target, faces, client, opts
        self.limits = MediaLimits.from_settings(settings)
        self.tau = opts.tau_fake if opts.tau_fake is not None else target.tau_fake
        self.progress = progress or (lambda _msg: None)
        self._stems: set[str] = set()

    def run(self, paths: Sequence[Path]) -> RedteamReport:
        self.opts.out_dir.mkdir(parents=True, exist_ok=True)
        report = RedteamReport(config=self._config())
        for path in paths:
            report.images.append(self.image(path))
        return report

    def _config(self) -> dict[str, Any]:
        return {"detector": self.target.name, "tau_fake": self.tau, "url": self.client.base,
                "variants": list(self.opts.variants), "out_dir": str(self.opts.out_dir),
                "attack": asdict(self.opts.attack), "jpeg_quality": JPEG_QUALITY}

    def image(self, path: Path) -> ImageReport:
        """Detect, attack, save, upload and judge one image (or say why it was skipped)."""
        self.progress(f"{path.name}: detecting faces")
        try:
            rgb = _load_rgb(path, self.limits)
        except MediaError as exc:
            return ImageReport(str(path), "skipped", f"{exc.code}: {exc.message}")
        found = self.faces.detect([rgb])[0]
        p_fake = _score(self.target.g, found)
        rep = ImageReport(str(path), "skipped", faces_found=len(found), p_fake_clean=p_fake)
        targets = [i for i, f in enumerate(found) if not f.quality and p_fake[i] >= self.tau]
        if not targets:
            rep.reason = _skip_reason(found, p_fake, self.tau)
            return rep
        rep.status, rep.attacked_faces = "attacked", targets
        faces = [found[i] for i in targets]
        boxes = [f.crop_box for f in faces]
        for variant in self.opts.variants:
            self.progress(f"{path.name}: {variant} on {len(targets)} face(s)")
            adv = attack_image(self.target.g, rgb, boxes, self.tau, variant, self.opts.attack)
            rep.variants.append(VariantInfo(variant, adv.iters, adv.linf, adv.p_fake_after,
                                            adv.views_real))
            rep.uploads += self._upload(path, adv, faces, targets)
        if self.opts.control:
            self.progress(f"{path.name}: control (unattacked)")
            clean = [p_fake[i] for i in targets]
            none = ImageAttack(CONTROL, rgb, clean, clean, None, 0, 0)
            rep.control = self._upload(path, none, faces, targets)
        return rep

    def _upload(self, path: Path, adv: ImageAttack, faces: list[DetectedFace],
                indices: list[int]) -> list[UploadReport]:
        """Save as PNG and JPEG-90, submit both, then wait for both (the service may batch)."""
        stem = self._stem(path, adv.variant)
        files = {"png": self.opts.out_dir / f"{stem}.png",
                 "jpeg90": self.opts.out_dir / f"{stem}-q{JPEG_QUALITY}.jpg"}
        _write(files["png"], adv.image)
        _write(files["jpeg90"], adv.image, JPEG_QUALITY)
        ups = [UploadReport(str(f), adv.variant, fmt) for fmt, f in files.items()]
        for up in ups:
            self.progress(f"{Path(up.file).name}: uploading")
            try:
                up.job_id = self.client.submit(Path(up.file))
            except ServiceError as exc:
                up.status, up.error = "error", str(exc)
        for up in ups:
            if up.job_id is not None:
                self._judge(up, adv, faces, indices)
        return ups

    def _judge(self, up: UploadReport, adv: ImageAttack, faces: list[DetectedFace],
               indices: list[int]) -> None:
        """Poll the analysis, then match each attacked face to the service's faces."""
        assert up.job_id is not None
        try:
            body = self.client.wait(up.job_id, self.opts.analysis_timeout_s)
            up.status = body["status"]
            if up.status != "done":
                up.error = str((body.get("error") or {}).get("message", "analysis failed"))
                return
            up.verdict = (body.get("summary") or {}).get("verdict")
            frames = self.client.frames(up.job_id)
        except ServiceError as exc:
            up.status, up.error = "error", str(exc)
            return
        served = frames[0]["faces"] if frames else []
        matches = match_faces([f.box for f in faces], [s["box"] for s in served])
        for k, (face, m) in enumerate(zip(faces, matches, strict=True)):
            up.faces.append(_outcome(indices[k], adv, k, face, served[m] if m is not None
                                     else None, m))

    def _stem(self, path: Path, variant: str) -> str:
        stem, n = f"{path.stem}-{variant}", 1
        while stem in self._stems:  # two inputs with one name (other folders)
            n += 1
            stem = f"{path.stem}-{n}-{variant}"
        self._stems.add(stem)
        return stem


def _outcome(index: int, adv: ImageAttack, k: int, face: DetectedFace,
             served: dict[str, Any] | None, m: int | None) -> FaceOutcome:
    out = FaceOutcome(index, adv.p_fake_before[k], adv.p_fake_after[k],
                      "lost" if served is None else served["verdict"],
                      crop_box=list(face.crop_box))
    if served is not None:
        out.service_p_fake, out.service_p_attacked = served.get("p_fake"), served.get("p_attacked")
        out.service_face, out.service_crop_box = m, served.get("crop_box")
    return out


def _load_rgb(path: Path, limits: MediaLimits) -> np.ndarray:
    """The upright RGB pixels the service would decode; videos are refused."""
    source = open_media(path, limits, 1)
    if source.info.kind != "image":
        raise UnsupportedMedia("redteam attacks still images; this is a video")
    return next(iter(source)).image


def _score(g: nn.Module, faces: list[DetectedFace]) -> list[float]:
    """g's p_fake on each face's uint8 crop: the exact tensor the service scores."""
    if not faces:
        return []
    device = next(g.parameters()).device
    crops = np.stack([f.crop for f in faces])
    x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return g(x).float().softmax(dim=1)[:, 1].tolist()


def _skip_reason(found: list[DetectedFace], p_fake: list[float], tau: float) -> str:
    if not found:
        return "no face found"
    judgeable = [p for f, p in zip(found, p_fake, strict=True) if not f.quality]
    if not judgeable:
        return "every face is flagged too small or blurry (the service would not judge it)"
    return f"g calls every face real (max p_fake {max(judgeable):.3f} < tau_fake {tau:.3f})"


def _write(path: Path, rgb: np.ndarray, jpeg_quality: int | None = None) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if jpeg_quality else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write {path}")


def match_faces(ours: Sequence[Sequence[float]], theirs: Sequence[Sequence[float]]
                ) -> list[int | None]:
    """For each of our boxes, the index of the service box it overlaps most (each used once,
    IoU ≥ MIN_IOU), else None."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)),
                   reverse=True)
    out: list[int | None] = [None] * len(ours)
    used: set[int] = set()
    for score, i, j in pairs:
        if score >= MIN_IOU and out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out
