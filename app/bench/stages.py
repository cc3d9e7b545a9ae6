"""The service's CPU-side stages on real footage: MTCNN per frame (app.pipeline.faces, the
service's settings) and one video end to end through ``analyze_source``, as ``dfshield
analyze`` runs it (open_media → faces → g, XAI, d → result).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from app.bench.csvout import Figure
from app.bench.media import SAMPLE_VIDEO
from app.config import Settings
from app.media import MediaLimits, open_media
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.pipeline.run import analyze_source
from app.schemas import AnalysisResult

E2E_STAGES = ("decode", "faces", "detector", "xai", "adversarial", "total")


def sample_frames(path: Path, n: int) -> list[np.ndarray]:
    """``n`` evenly sampled RGB frames of ``path`` (as analyses sample them)."""
    limits = MediaLimits(max_frames=n, max_frames_cap=max(n, 256))
    return [f.image for f in open_media(path, limits, n)]


def mtcnn_figures(faces: FaceDetector, n_frames: int, repeats: int,
                  video: Path = SAMPLE_VIDEO) -> list[Figure]:
    """MTCNN ms per frame on ``n_frames`` frames of the bundled clip, and faces found."""
    frames = sample_frames(video, n_frames)
    faces.detect(frames[:1])  # warm-up
    times, found = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = sum(len(per_frame) for per_frame in faces.detect(frames))
        times.append((time.perf_counter() - t0) / len(frames))
    h, w = frames[0].shape[:2]
    backend = f"torch {faces.device}"
    return [
        Figure("faces", f"MTCNN per frame ({video.name}, {w}x{h})", backend, len(frames),
               float(np.median(times)) * 1000, "ms/frame"),
        Figure("faces", f"faces found per frame ({video.name})", backend, len(frames),
               found / len(frames), "faces/frame"),
    ]


def e2e_figures(settings: Settings, analyzer: Analyzer, faces: FaceDetector, n_frames: int,
                repeats: int, video: Path = SAMPLE_VIDEO) -> list[Figure]:
    """Seconds per video for ``n_frames`` sampled frames of the bundled clip (median, after
    one untimed run: the first analysis pays ~1.5 s of one-off setup), and the stages' ms of
    the last result."""
    limits = MediaLimits.from_settings(settings)

    def analyze() -> AnalysisResult:
        return analyze_source(open_media(video, limits, n_frames), analyzer, faces)

    analyze()
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = analyze()
        times.append(time.perf_counter() - t0)
    n, backend = len(result.frames), analyzer.device_label
    out = [Figure("e2e", f"per video ({video.name}, {analyzer.xai_method})", backend, n,
                  float(np.median(times)), "s/video")]
    out += [Figure("e2e", f"stage {stage} per video", backend, n, result.timings_ms[stage],
                   "ms/video") for stage in E2E_STAGES if result.timings_ms.get(stage)]
    return out
