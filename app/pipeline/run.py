"""In-process analysis of one file: media → faces (f) → scores (g, XAI, d) → result.

The service worker runs the same stages but batches crops across requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from app.media import MediaLimits, MediaSource, SampledFrame, open_media
from app.pipeline.analyze import Analyzer, build_frame, build_result
from app.pipeline.faces import FaceDetector
from app.pipeline.tracks import FaceTracker
from app.schemas import AnalysisResult, FramePublic

Progress = Callable[[int, int], None]


def _timed(timings: dict[str, float], stage: str, t0: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t0) * 1000.0


def analyze_frames(
    frames: list[SampledFrame],
    analyzer: Analyzer,
    faces: FaceDetector,
    xai_method: str,
    timings: dict[str, float],
    tracker: FaceTracker | None = None,
) -> list[FramePublic]:
    """Faces on a chunk of frames, then one batched scoring pass over all their crops.

    ``tracker`` links the faces to those of earlier chunks (a new one: this chunk only).
    """
    tracker = tracker or FaceTracker()
    t0 = time.perf_counter()
    detected = faces.detect([f.image for f in frames])
    _timed(timings, "faces", t0)
    crops = [face.crop for per_frame in detected for face in per_frame]
    scores = analyzer.score_crops(crops, [xai_method] * len(crops), timings)
    out, k = [], 0
    for frame, per_frame in zip(frames, detected, strict=True):
        persons = tracker.assign(frame.index, per_frame)
        out.append(build_frame(frame, per_frame, scores[k : k + len(per_frame)], persons))
        k += len(per_frame)
    return out


def analyze_path(
    path: Path,
    analyzer: Analyzer,
    faces: FaceDetector,
    limits: MediaLimits,
    max_frames: int | None = None,
    xai_method: str | None = None,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Analyse an image or video file end to end; raises ``MediaError`` on bad input."""
    source = open_media(Path(path), limits, max_frames)
    return analyze_source(source, analyzer, faces, xai_method, progress=progress)


def analyze_source(
    source: MediaSource,
    analyzer: Analyzer,
    faces: FaceDetector,
    xai_method: str | None = None,
    chunk: int = 8,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Analyse an opened media source (frames decode lazily, ``chunk`` at a time)."""
    method = xai_method or analyzer.xai_method
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    total = len(source)
    frames: list[FramePublic] = []
    tracker = FaceTracker()  # one per analysis: person ids run across chunks
    it = iter(source)
    while True:
        t0 = time.perf_counter()
        batch = list(islice(it, chunk))  # decoding is lazy: this is where it happens
        _timed(timings, "decode", t0)
        if not batch:
            break
        frames.extend(analyze_frames(batch, analyzer, faces, method, timings, tracker))
        if progress:
            progress(len(frames), total)
    timings["total"] = (time.perf_counter() - t_start) * 1000.0
    return build_result(source.info, frames, analyzer, method, timings, source.warnings,
                        faces.quality)
