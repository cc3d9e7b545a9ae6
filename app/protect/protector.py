"""Protect one photo: find faces, run stage 1 (and stage 2 in ``tsdf`` mode), measure, report.

``interrupt``: stage 1 with the whole eps. ``tsdf``: stage 1 with ``interruption_share`` of eps
(a sign-PGD perturbation saturates its budget, which would leave intensity separation no room
for the poison), then stage 2 writes the poison into the rest of the same eps-ball.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from app.pipeline.faces import DetectedFace, FaceDetector
from app.protect.budget import quantise, region_mask
from app.protect.crop import CropBox, Eot, crop_resize
from app.protect.detectors import cascade_boxes, mtcnn_boxes
from app.protect.generators import Generator
from app.protect.interrupt import FEATURE_WEIGHT, GEN_SIZE, PgdConfig, interruption, view_loss
from app.protect.metrics import SUCCESS_L2, edited_mask, found, l2_mask, psnr_ssim
from app.protect.poison import MtcnnLoss
from app.protect.poison import poisoning as run_poisoning
from app.protect.report import (
    FaceReport,
    GeneratorEffect,
    MeasuredAgainst,
    Mode,
    ProtectReport,
)

Progress = Callable[[str, int, int], None]


class NoFaceFound(ValueError):
    """The photo has no face the detector can find: there is nothing to protect."""

    code = "no_face"


@dataclass(frozen=True)
class ProtectOptions:
    mode: Mode = "tsdf"
    eps: float = 0.025
    steps: int = 100
    poison_steps: int = 100
    eot_samples: int = 1
    interruption_share: float = 0.5
    keep_weight: float = 1.0  # stage 2 also keeps stage 1's distortion up (0: poison only)
    eot: Eot = field(default_factory=Eot)
    seed: int = 0
    deadline_s: float | None = None
    purifier_eot: bool = False  # stage 1 through the Protector's purifier too
    hf_weight: float = 0.0  # AntiPure's patch-wise high-frequency guidance (with purifier_eot)
    feature_weight: float = FEATURE_WEIGHT  # stage 1's feature term (TSDF)


@dataclass
class ProtectResult:
    protected: np.ndarray  # HxWx3 uint8
    report: ProtectReport


class Protector:
    """Generators + the face detector (+ optionally the attacker's purifier), loaded once;
    ``protect(rgb)`` per photo."""

    def __init__(self, generators: Sequence[Generator], faces: FaceDetector,
                 purifier: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not generators:
            raise ValueError("protection needs at least one generator")
        self.generators = list(generators)
        self.faces = faces
        self.purifier = purifier
        self.mtcnn_loss = MtcnnLoss(faces.mtcnn)

    def protect(self, rgb: np.ndarray, opts: ProtectOptions,
                progress: Progress | None = None) -> ProtectResult:
        t0 = time.monotonic()
        stop = _deadline(t0, opts.deadline_s)
        detected = self.faces.detect([rgb])[0]
        if not detected:
            raise NoFaceFound("no face found in the photo (MTCNN); nothing to protect")
        image = to_tensor(rgb)
        delta, done, total = self.perturb(image, detected, opts, progress, stop)
        protected_t = quantise(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).unsqueeze(0),
                               delta)
        protected = np.ascontiguousarray(protected_t[0].permute(1, 2, 0).numpy())
        report = self.measure(rgb, protected, detected, opts)
        report.steps, report.steps_done = total, done
        report.deadline_hit = done < total
        report.seconds = round(time.monotonic() - t0, 2)
        return ProtectResult(protected, report)

    def perturb(self, image: torch.Tensor, detected: list[DetectedFace], opts: ProtectOptions,
                progress: Progress | None, stop: Callable[[], bool]
                ) -> tuple[torch.Tensor, int, int]:
        """The perturbation of the whole frame, optimised face by face on the window around
        each (autograd over a whole 1280x720 frame cost most of the time). Crop boxes of
        different faces rarely overlap; where they do, the later face's perturbation wins,
        which is still inside eps."""
        full = torch.zeros_like(image)
        done = total = 0
        for face in detected:
            x1, y1, x2, y2 = work_window([face], image.shape[-1], image.shape[-2])
            delta, d, t = self._perturb_window(
                image[:, :, y1:y2, x1:x2].contiguous(), [_shifted(face, x1, y1)], opts,
                progress, stop, image.shape[-2:])
            region = full[:, :, y1:y2, x1:x2]
            full[:, :, y1:y2, x1:x2] = torch.where(delta != 0, delta, region)
            done, total = done + d, total + t
        return full, done, total

    def _perturb_window(self, image: torch.Tensor, detected: list[DetectedFace],
                        opts: ProtectOptions, progress: Progress | None,
                        stop: Callable[[], bool], frame_hw: tuple[int, int]
                        ) -> tuple[torch.Tensor, int, int]:
        crop_boxes = [f.crop_box for f in detected]
        mask = region_mask(image.shape, crop_boxes)
        share = 1.0 if opts.mode == "interrupt" else opts.interruption_share
        cfg1 = PgdConfig(eps=opts.eps * share, steps=opts.steps, eot_samples=opts.eot_samples,
                         eot=opts.eot, seed=opts.seed, purifier=self._purifier(opts),
                         hf_weight=opts.hf_weight, feature_weight=opts.feature_weight)
        with torch.enable_grad():
            d1, done1 = interruption(image, crop_boxes, self.generators, cfg1, mask,
                                     progress=_stage(progress, "interruption"), stop=stop)
            if opts.mode == "interrupt":
                return d1, done1, opts.steps
            cfg2 = PgdConfig(eps=opts.eps, steps=opts.poison_steps, seed=opts.seed)

            def keep(adv: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
                return view_loss(image, adv, crop_boxes, self.generators, cfg1, rng)

            delta, done2 = run_poisoning(image, [f.box for f in detected], self.mtcnn_loss,
                                         cfg2, mask, d1,
                                         progress=_stage(progress, "poisoning"), stop=stop,
                                         keep=keep, keep_weight=opts.keep_weight,
                                         frame_hw=(int(frame_hw[0]), int(frame_hw[1])))
        return delta, done1 + done2, opts.steps + opts.poison_steps

    def _purifier(self, opts: ProtectOptions) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not opts.purifier_eot:
            return None
        if self.purifier is None:
            raise ValueError("purifier_eot needs a purifier: publish one with `dfshield train "
                             "denoiser` and load it into the Protector")
        return self.purifier

    def measure(self, original: np.ndarray, protected: np.ndarray,
                detected: list[DetectedFace], opts: ProtectOptions) -> ProtectReport:
        after = mtcnn_boxes(self.faces, protected)
        haar_before, haar_after = cascade_boxes(original), cascade_boxes(protected)
        faces = [self._face_report(original, protected, f, after, haar_before, haar_after)
                 for f in detected]
        psnr, ssim = psnr_ssim(original, protected)
        linf = float(np.abs(protected.astype(int) - original.astype(int)).max()) / 255.0
        return ProtectReport(
            mode=opts.mode, eps=opts.eps, linf=round(linf, 5), width=original.shape[1],
            height=original.shape[0], faces=faces, psnr_db=round(psnr, 2), ssim=round(ssim, 4),
            steps=0, steps_done=0, deadline_hit=False, seconds=0.0,
            measured_against=MeasuredAgainst(generators=[g.name for g in self.generators]))

    def _face_report(self, original: np.ndarray, protected: np.ndarray, face: DetectedFace,
                     after: list[tuple[tuple[float, ...], float]],
                     haar_before: list, haar_after: list) -> FaceReport:
        match = [p for b, p in after if found(face.box, [b])]
        haar_own = [b for b in haar_before if found(face.box, [b], 0.3)]
        x1, y1, x2, y2 = face.crop_box
        psnr, ssim = psnr_ssim(original[y1:y2, x1:x2], protected[y1:y2, x1:x2])
        return FaceReport(
            box=tuple(round(v, 1) for v in face.box), crop_box=face.crop_box,
            generators=generator_effects(self.generators, original, protected, face.crop_box),
            mtcnn_found_after=bool(match), mtcnn_prob_after=round(max(match), 4) if match
            else None, haar_found_before=bool(haar_own),
            haar_found_after=any(found(b, haar_after) for b in haar_own),
            psnr_db=round(psnr, 2), ssim=round(ssim, 4))


CONTEXT = 1.6  # P-Net looks at this much around a face box (poison.MtcnnLoss.pnet_term)


def work_window(faces: Sequence[DetectedFace], width: int, height: int) -> CropBox:
    """Bounding box of every crop box and every face's P-Net context, inside the frame."""
    xs, ys = [], []
    for f in faces:
        bx1, by1, bx2, by2 = f.box
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        hw, hh = CONTEXT * (bx2 - bx1) / 2, CONTEXT * (by2 - by1) / 2
        xs += [f.crop_box[0], f.crop_box[2], cx - hw, cx + hw]
        ys += [f.crop_box[1], f.crop_box[3], cy - hh, cy + hh]
    x1, y1 = max(0, int(min(xs))), max(0, int(min(ys)))
    return x1, y1, min(width, int(np.ceil(max(xs))) + 1), min(height, int(np.ceil(max(ys))) + 1)


def _shifted(face: DetectedFace, dx: int, dy: int) -> DetectedFace:
    b, c = face.box, face.crop_box
    return replace(face, box=(b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy),
                   crop_box=(c[0] - dx, c[1] - dy, c[2] - dx, c[3] - dy))


@torch.no_grad()
def generator_effects(gens: Sequence[Generator], original: np.ndarray, protected: np.ndarray,
                      crop_box: tuple[int, int, int, int]) -> list[GeneratorEffect]:
    """L2_mask and success of each generator on the crop: protected vs original output."""
    x = _crop_tensor(original, crop_box)
    x_adv = _crop_tensor(protected, crop_box)
    effects = []
    for g in gens:
        out_c = g(x)
        value = float(l2_mask(g(x_adv), out_c, edited_mask(x, out_c))[0])
        effects.append(GeneratorEffect(name=g.name, l2_mask=round(value, 5),
                                       success=value > SUCCESS_L2))
    return effects


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → [1,3,H,W] float in [0,1] (copied: the array may be read-only)."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def _crop_tensor(rgb: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    return crop_resize(to_tensor(rgb), box, GEN_SIZE)


def _deadline(t0: float, seconds: float | None) -> Callable[[], bool]:
    if seconds is None:
        return lambda: False
    return lambda: time.monotonic() - t0 > seconds


def _stage(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)
