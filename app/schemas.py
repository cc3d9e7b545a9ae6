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
    UNCERTAIN = "uncertain"  # faces found, none judgeable (every one has a quality flag)


# Why a face is reported but not judged (app.pipeline.quality).
QualityFlag = Literal["face_too_small", "face_too_blurry"]


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
    p_fake: float | None = Field(description="null only under DFSHIELD_SCORE_EXPOSURE=verdict")
    p_attacked: float | None = Field(None, description="only for faces g called real")
    verdict: Verdict = Field(description="uncertain when `quality` has a flag (scores kept)")
    quality: list[QualityFlag] = Field(
        default_factory=list, description="empty: judgeable; else why it is not judged"
    )
    sharpness: float | None = Field(None, description="var(Laplacian)/var(grey) of the face")
    person: int | None = Field(None, description="id of the person (track) this face belongs to")
    explanation_url: str | None = None
    explanation_of: Literal["real", "fake"] | None = Field(
        None, description="logit of g the heatmap explains: 'real' (the map d judged) or "
        "'fake' (why g called the face fake; DFSHIELD_EXPLAIN_FAKE)",
    )
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
    uncertain: int = 0


class Summary(BaseModel):
    verdict: Verdict = Field(description="the paper's majority vote over the frame verdicts")
    verdict_rule: Literal["frame_majority"] = Field(
        "frame_majority",
        description="what produced `verdict`: the frame majority vote (rules.video); each "
        "person's verdict applies the same vote to that person's faces (rules.person)",
    )
    frames: VerdictCounts
    faces: VerdictCounts
    persons: VerdictCounts = Field(default_factory=VerdictCounts, description="by verdict")


class FaceRef(BaseModel):
    frame: int = Field(description="sampled-frame index")
    face: int = Field(description="face index within that frame")


class PersonPublic(BaseModel):
    """One person: a track of faces linked across sampled frames (each face of an image)."""

    id: int = Field(description="0, 1, ... in order of first appearance")
    verdict: Verdict = Field(description="the video rule over this person's face verdicts")
    frames: list[int] = Field(description="sampled-frame indices where this person appears")
    start_s: float = Field(description="timestamp of the first of those frames")
    end_s: float = Field(description="timestamp of the last of those frames")
    faces: VerdictCounts = Field(description="this person's face verdicts")
    mean_p_fake: float | None = Field(description="null under DFSHIELD_SCORE_EXPOSURE=verdict")
    max_p_fake: float | None = Field(description="null under DFSHIELD_SCORE_EXPOSURE=verdict")
    max_p_attacked: float | None = Field(None, description="over faces g called real")
    representative: FaceRef = Field(description="largest judgeable face (else largest face)")


class QualityThresholds(BaseModel):
    min_face_px: float = Field(description="face_too_small: box side below this (original px)")
    min_sharpness: float = Field(description="face_too_blurry: sharpness below this")


class Rules(BaseModel):
    """Which rule produced which verdict, in words, and the quality bars used."""

    face: str
    frame: str
    video: str
    person: str
    quality: QualityThresholds


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
    persons: list[PersonPublic] = Field(
        default_factory=list, description="faces linked across frames; one per face for images"
    )
    thresholds: Thresholds
    rules: Rules | None = None
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
