"""Public result models: the same schema the CLI writes and the API returns."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class Verdict(StrEnum):
    REAL = "real"
    FAKE = "fake"
    ATTACKED = "attacked"
    NO_FACE = "no_face"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Thresholds(BaseModel):
    tau_fake: float = Field(description="face is fake when p_fake >= tau_fake")
    tau_attacked: float = Field(description="real-called face is attacked when p_attacked >= this")


class ModelInfo(BaseModel):
    name: str
    role: Literal["detector", "adversarial"]
    architecture: str
    version: str
    sha256: str
    trained: bool = Field(description="False for placeholder random weights: not a detector")


class FacePublic(BaseModel):
    index: int = Field(description="face index within the frame, largest first")
    box: list[float] = Field(description="[x1, y1, x2, y2] detector box, frame pixels")
    crop_box: list[int] = Field(description="[x1, y1, x2, y2] square 1.3x crop actually used")
    detection_prob: float
    landmarks: list[list[float]] = Field(default_factory=list, description="5 (x, y) points")
    p_fake: float
    p_attacked: float | None = Field(None, description="only for faces g called real")
    verdict: Verdict
    explanation_url: str | None = None
    crop_url: str | None = None


class FramePublic(BaseModel):
    index: int = Field(description="position among the sampled frames")
    source_index: int | None = Field(None, description="frame number in the source video")
    timestamp: float = Field(description="seconds from the start of the video")
    verdict: Verdict
    faces: list[FacePublic] = Field(default_factory=list)


class VerdictCounts(BaseModel):
    real: int = 0
    fake: int = 0
    attacked: int = 0
    no_face: int = 0


class Summary(BaseModel):
    verdict: Verdict
    frames: VerdictCounts
    faces: VerdictCounts


class MediaInfo(BaseModel):
    kind: Literal["image", "video"]
    format: str
    width: int
    height: int
    duration_s: float | None = None
    fps: float | None = None
    frames_sampled: int
    rotation: int = 0


class AnalysisResult(BaseModel):
    """Everything known about one analysed file."""

    summary: Summary
    media: MediaInfo
    frames: list[FramePublic]
    thresholds: Thresholds
    xai_method: str
    models: list[ModelInfo]
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per pipeline stage")
    warnings: list[str] = Field(default_factory=list)
    device: str


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
