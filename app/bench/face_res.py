"""MTCNN's detection resolution chosen by measurement: cost per frame and recall for a grid of
(pyramid step, frame cap) settings against a dense reference run on the same frames.

MTCNN's cost is its image pyramid: levels from 12/min_face_size of the frame down by
``pyramid_factor`` each. Shrinking the frame alone (``detect_max_side``) leaves that pyramid
the same in pixels (min_face_size shrinks with it) and only saves resampling; a coarser step
drops levels. ``min_face_size`` stays 40: faces from 40 px up are reported (those under the
quality bar, 64 px, as ``face_too_small``), so it is not a speed knob here.

Frames: the bundled talking-face clip, plus group frames tiled from its frames shrunk so the
faces span 40–130 px (every size class around the 64 px quality bar). Reference: min_face_size
20, step 0.85, no frame cap, probability >= 0.9; a face counts as found at IoU >= 0.5.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.bench.csvout import Figure, Target
from app.bench.media import SAMPLE_VIDEO
from app.bench.stages import sample_frames
from app.pipeline.faces import DetectedFace, FaceDetector
from app.pipeline.tracks import iou

# Face sides in the group frames ≈ 215 px x scale: 43 to 129 px, around the 64 px bar.
GROUP_SCALES = ((0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.5, 0.3, 0.2),
                (0.55, 0.45, 0.35, 0.32, 0.28, 0.22, 0.4, 0.26, 0.19))
JUDGED_PX = 64.0  # faces this large are judged (DFSHIELD_QUALITY_MIN_FACE_PX)
REPORTED_PX = 40.0  # faces this large are reported (DFSHIELD_MIN_FACE_SIZE)
RECALL_TARGET = Target(">=", 1.0)  # a chosen setting must keep every judged face


@dataclass(frozen=True)
class Setting:
    pyramid_factor: float
    detect_max_side: int

    @property
    def label(self) -> str:
        return f"step {self.pyramid_factor:g}, max side {self.detect_max_side}"


GRID = (Setting(0.709, 1280), Setting(0.6, 1280), Setting(0.5, 1280), Setting(0.709, 640),
        Setting(0.6, 640), Setting(0.5, 640))
REFERENCE = (20, 0.85, 8192)  # min_face_size, pyramid_factor, detect_max_side


def group_frame(frames: Sequence[np.ndarray], scales: Sequence[float], width: int = 1280,
                height: int = 720) -> np.ndarray:
    """RGB canvas tiled with ``frames`` shrunk by ``scales`` (left to right, row by row): the
    clip's face (~215 px at full size) at many sizes, with its context, in one frame."""
    canvas = np.full((height, width, 3), 128, np.uint8)
    x = y = row_h = 0
    for frame, scale in zip(frames, scales, strict=False):
        h, w = frame.shape[:2]
        tile = cv2.resize(frame, (round(w * scale), round(h * scale)),
                          interpolation=cv2.INTER_AREA)
        th, tw = tile.shape[:2]
        if x + tw > width:
            x, y, row_h = 0, y + row_h, 0
        if y + th > height:
            break
        canvas[y:y + th, x:x + tw] = tile
        x, row_h = x + tw, max(row_h, th)
    return canvas


def bench_frames(n_video: int) -> list[np.ndarray]:
    tiles = sum(len(s) for s in GROUP_SCALES)
    video = sample_frames(SAMPLE_VIDEO, max(n_video, tiles))
    groups, start = [], 0
    for scales in GROUP_SCALES:  # each tile its own frame of the clip
        groups.append(group_frame(video[start:start + len(scales)], scales))
        start += len(scales)
    step = max(1, len(video) // max(n_video, 1))
    return video[::step][:n_video] + groups


def recall(found: list[list[DetectedFace]], ref: list[list[DetectedFace]],
           min_side: float) -> tuple[float, int, float]:
    """Share of reference faces of side >= ``min_side`` matched at IoU >= 0.5, their count, and
    the mean IoU of the matches (how far the crop boxes moved)."""
    wanted = [(i, f) for i, faces in enumerate(ref) for f in faces
              if max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_side]
    best = [max((iou(f.box, g.box) for g in found[i]), default=0.0) for i, f in wanted]
    hits = [b for b in best if b >= 0.5]
    share = len(hits) / len(wanted) if wanted else 1.0
    return share, len(wanted), float(np.mean(hits)) if hits else 0.0


def _detector(device: str, min_face: int, factor: float, max_side: int) -> FaceDetector:
    return FaceDetector(device, min_face_size=min_face, max_faces=64, crop_size=64,
                        detect_max_side=max_side, pyramid_factor=factor)


def _timed(det: FaceDetector, frames: list[np.ndarray],
           repeats: int) -> tuple[float, list[list[DetectedFace]]]:
    det.detect(frames[:1])  # warm-up
    times, found = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = det.detect(frames)
        times.append((time.perf_counter() - t0) / len(frames))
    return float(np.median(times)) * 1000, found


def face_res_figures(device: str, n_video: int, repeats: int) -> list[Figure]:
    """ms/frame and recall (judged and reported faces) per grid setting, and the reference."""
    frames = bench_frames(n_video)
    ref_ms, ref = _timed(_detector(device, *REFERENCE), frames, 1)
    backend = f"torch {device}"
    out = [Figure("faces", "MTCNN reference (min face 20, step 0.85)", backend, len(frames),
                  ref_ms, "ms/frame")]
    for s in GRID:
        ms, found = _timed(_detector(device, int(REPORTED_PX), s.pyramid_factor,
                                     s.detect_max_side), frames, repeats)
        judged, n_judged, iou = recall(found, ref, JUDGED_PX)
        reported, _, _ = recall(found, ref, REPORTED_PX)
        out += [Figure("faces", f"MTCNN {s.label}", backend, len(frames), ms, "ms/frame"),
                Figure("faces", f"MTCNN {s.label}: recall of judged faces ({n_judged})",
                       backend, len(frames), judged, "share", RECALL_TARGET),
                Figure("faces", f"MTCNN {s.label}: recall of reported faces", backend,
                       len(frames), reported, "share"),
                Figure("faces", f"MTCNN {s.label}: mean IoU with the reference, judged faces",
                       backend, len(frames), iou, "IoU")]
    return out
