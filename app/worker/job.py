"""One job, start to finish: decode → faces (this thread) → shared batcher → frames → result.

Chunks are pipelined: chunk k's crops go to the batcher, then this thread decodes and
face-detects chunk k+1 while the model scores chunk k, and only then waits for k's scores.
Before, the thread sat idle during scoring and the model sat idle during decode + MTCNN, so
batches stayed small (mean 4 of 16 on the 2-core bench).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from app.api.metrics import STAGE_SECONDS
from app.config import Settings
from app.guard.policy import Guard, UploadGuard
from app.media import MediaLimits, SampledFrame, open_media
from app.pipeline.analyze import Analyzer, build_frame, build_result
from app.pipeline.explain import map_to_heatmap
from app.pipeline.faces import DetectedFace, FaceDetector
from app.pipeline.tracks import FaceTracker
from app.queue.batcher import Batcher
from app.schemas import AnalysisResult, FramePublic
from app.store.results import JobRecord, PngKind, ResultStore
from app.worker.scoring import CropItem, ScoredCrop

SCORE_TIMEOUT_S = 600.0  # a batcher that never answers is a bug: fail the attempt, don't hang


class JobCancelled(Exception):
    """The job was deleted while it ran."""


class WorkerStopping(Exception):
    """Shutdown asked for: give the job back to the queue without spending an attempt."""


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def face_url(job_id: str, frame: int, face: int, kind: PngKind) -> str:
    """Root-relative link to a face image (the API route that serves it)."""
    return f"/v1/analyses/{job_id}/frames/{frame}/faces/{face}/{kind}.png"


@dataclass
class _Submitted:
    """A chunk whose crops are with the batcher."""

    chunk: list[SampledFrame]
    detected: list[list[DetectedFace]]
    futures: list[Future[ScoredCrop]]


class JobRunner:
    """Runs jobs for one worker thread; its ``FaceDetector`` is that thread's own."""

    def __init__(
        self,
        settings: Settings,
        store: ResultStore,
        batcher: Batcher[CropItem, ScoredCrop],
        analyzer: Analyzer,
        faces: FaceDetector,
        guard: Guard | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.store = store
        self.batcher = batcher
        self.analyzer = analyzer
        self.faces = faces
        self.limits = MediaLimits.from_settings(settings)

    def run(
        self, job: JobRecord, stopping: threading.Event,
        abandoned: Callable[[], bool] | None = None,
    ) -> AnalysisResult:
        """Process ``job``; raises MediaError (bad input), JobCancelled or WorkerStopping.

        ``abandoned`` (the worker's watchdog gave up on this attempt: deadline passed) stops
        it like a delete would, at the next frame chunk or batch."""
        deleted = _cancel_check(self.store, job.id)
        gone = abandoned or (lambda: False)

        def cancelled() -> bool:
            return gone() or deleted()

        limits = self.limits
        if job.max_frames and job.max_frames > limits.max_frames_cap:  # settings changed since
            limits = replace(limits, max_frames_cap=job.max_frames)
        source = open_media(Path(job.media_path), limits, job.max_frames)
        watch = self.guard.start(job.id, job.owner, Path(job.media_path)) if self.guard else None
        total = len(source)
        self.store.set_progress(job.id, 0, total)
        timings: dict[str, float] = defaultdict(float)
        frames: list[FramePublic] = []
        tracker = FaceTracker()  # per attempt: a retry re-links from frame 0, same ids
        it = iter(source)
        t_start = time.perf_counter()
        pending: _Submitted | None = None
        while True:
            if stopping.is_set():
                raise WorkerStopping()
            if cancelled():
                raise JobCancelled()
            t0 = time.perf_counter()
            chunk = list(islice(it, self.settings.worker_frame_chunk))  # lazy decode happens here
            _stage(timings, "decode", t0)
            nxt = self._submit(chunk, job, timings, cancelled, watch) if chunk else None
            if pending is not None:  # chunk k+1 is queued: now collect chunk k
                frames.extend(self._collect(job, pending, total, timings, tracker))
            pending = nxt
            if pending is None:
                break
        if watch is not None:  # judged before the result is visible: the next query sees it
            watch.finish()
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        return build_result(source.info, frames, self.analyzer, job.xai_method, timings,
                            source.warnings, self.faces.quality)

    def _submit(
        self,
        chunk: list[SampledFrame],
        job: JobRecord,
        timings: dict[str, float],
        cancelled: Callable[[], bool],
        watch: UploadGuard | None,
    ) -> _Submitted:
        """Detect the chunk's faces and queue their crops; the scores come later."""
        t0 = time.perf_counter()
        detected = self.faces.detect([f.image for f in chunk])
        _stage(timings, "faces", t0)
        items = [CropItem(face.crop, job.xai_method) for per in detected for face in per]
        futures: list[Future[ScoredCrop]] = self.batcher.submit_many(items, expired=cancelled)
        if watch is not None:  # fingerprints of the crops g sees, while the batcher scores them
            watch.observe([item.crop for item in items])
        return _Submitted(chunk, detected, futures)

    def _collect(
        self,
        job: JobRecord,
        sub: _Submitted,
        total: int,
        timings: dict[str, float],
        tracker: FaceTracker,
    ) -> list[FramePublic]:
        """Wait for a submitted chunk's scores; build, store and return its frames."""
        chunk, detected = sub.chunk, sub.detected
        scored = [f.result(timeout=SCORE_TIMEOUT_S) for f in sub.futures]
        for s in scored:
            for stage, ms in s.cost_ms.items():
                timings[stage] += ms
        frames, pngs, k = [], {}, 0
        for frame, per in zip(chunk, detected, strict=True):
            mine = scored[k : k + len(per)]
            k += len(per)
            persons = tracker.assign(frame.index, per)
            public = build_frame(frame, per, [s.score for s in mine], persons)
            pngs.update(self._images(job.id, public, per, mine))
            frames.append(public)
        self.store.put_frames(job.id, frames, pngs, total)
        return frames

    def _images(
        self, job_id: str, frame: FramePublic, faces: list[DetectedFace], scored: list[ScoredCrop]
    ) -> dict[tuple[int, int, PngKind], bytes]:
        """crop.png for every face; explanation.png (heatmap over the crop) when XAI ran: d's map
        for real-called faces, the fake logit's map for fake-called ones (``explanation_of``)."""
        out: dict[tuple[int, int, PngKind], bytes] = {}
        for pub, face, s in zip(frame.faces, faces, scored, strict=True):
            out[(frame.index, pub.index, "crop")] = encode_png(face.crop)
            pub.crop_url = face_url(job_id, frame.index, pub.index, "crop")
            if s.score.xai_map is not None:
                heat = map_to_heatmap(s.score.xai_map, face.crop)
                out[(frame.index, pub.index, "explanation")] = encode_png(heat)
                pub.explanation_url = face_url(job_id, frame.index, pub.index, "explanation")
                pub.explanation_of = s.score.xai_target
        return out


def _stage(timings: dict[str, float], stage: str, t0: float) -> None:
    seconds = time.perf_counter() - t0
    timings[stage] += seconds * 1000.0
    STAGE_SECONDS.labels(stage).observe(seconds)


def _cancel_check(store: ResultStore, job_id: str, every_s: float = 0.5) -> Callable[[], bool]:
    """``store.is_deleted`` at most every ``every_s`` (it is asked per chunk and per batch)."""
    state = {"t": 0.0, "gone": False}

    def cancelled() -> bool:
        now = time.monotonic()
        if not state["gone"] and now - state["t"] >= every_s:
            state["t"] = now
            state["gone"] = store.is_deleted(job_id)
        return bool(state["gone"])

    return cancelled
