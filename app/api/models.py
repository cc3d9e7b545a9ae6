"""API-only request/response models (the result schema itself lives in ``app.schemas``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from app.config import XaiMethod
from app.schemas import (
    AnalysisResult,
    FramePublic,
    JobStatus,
    MediaInfo,
    ModelInfo,
    PersonPublic,
    Rules,
    Summary,
    Thresholds,
    Verdict,
)
from app.store.results import JobRecord


class AnalyzeForm(BaseModel):
    """Optional form fields of ``POST /v1/analyze`` (beside the ``file`` part)."""

    model_config = ConfigDict(extra="forbid")

    xai_method: XaiMethod | None = Field(None, description="default: the service's setting")
    max_frames: int | None = Field(None, ge=1, description="frames sampled evenly (videos)")
    callback_url: AnyHttpUrl | None = Field(None, description="webhook called when finished")
    wait: float = Field(0.0, ge=0, description="seconds to wait for a synchronous 200 answer")


class Links(BaseModel):
    analysis: str
    frames: str


def links_for(job_id: str) -> Links:
    base = f"/v1/analyses/{job_id}"
    return Links(analysis=base, frames=f"{base}/frames")


class AnalysisAccepted(BaseModel):
    """202 body: where to poll."""

    id: str
    status: JobStatus
    links: Links


class Progress(BaseModel):
    frames_done: int
    frames_total: int | None = Field(None, description="known once decoding started")


class JobError(BaseModel):
    code: str
    message: str


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class WebhookState(BaseModel):
    status: str | None = Field(None, description="pending | delivered | failed")
    attempts: int = 0
    http_status: int | None = None
    error: str | None = None


class AnalysisPublic(BaseModel):
    """``GET /v1/analyses/{id}``: state, and the summary once done (frames are paged apart)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    progress: Progress
    xai_method: str
    max_frames: int | None = None
    filename: str | None = None
    size_bytes: int = 0
    callback_url: str | None = None
    media: MediaInfo | None = None
    summary: Summary | None = None
    persons: list[PersonPublic] = Field(
        default_factory=list, description="per-person verdicts (faces linked across frames)"
    )
    thresholds: Thresholds | None = None
    rules: Rules | None = Field(None, description="which rule produced which verdict")
    models: list[ModelInfo] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    device: str | None = None
    error: JobError | None = None
    webhook: WebhookState | None = Field(None, description="only when a callback_url was given")
    links: Links

    @classmethod
    def build(
        cls, job: JobRecord, result: AnalysisResult | None = None, **more: object
    ) -> Self:
        error = None
        if job.status == JobStatus.FAILED:
            error = JobError(code=job.error_code or "failed", message=job.error_message or "")
        fields: dict[str, object] = {
            "id": job.id, "status": job.status, "created_at": _dt(job.created_at),
            "started_at": _dt(job.started_at), "finished_at": _dt(job.finished_at),
            "attempts": job.attempts,
            "progress": Progress(frames_done=job.frames_done, frames_total=job.frames_total),
            "xai_method": job.xai_method, "max_frames": job.max_frames,
            "filename": job.filename, "size_bytes": job.size_bytes,
            "callback_url": job.callback_url, "media": job.media, "error": error,
            "links": links_for(job.id),
            "webhook": WebhookState(status=job.webhook_status, attempts=job.webhook_attempts,
                                    http_status=job.webhook_http_status,
                                    error=job.webhook_error) if job.callback_url else None,
        }
        if result is not None:  # the worker's view wins: actual frames sampled, models used
            fields.update(media=result.media, summary=result.summary, persons=result.persons,
                          thresholds=result.thresholds, rules=result.rules,
                          models=result.models,
                          timings_ms=result.timings_ms, warnings=result.warnings,
                          device=result.device, xai_method=result.xai_method)
        return cls.model_validate({**fields, **more})


class GuardReview(BaseModel):
    """The guard's record of one analysis (admin and moderate keys only)."""

    near_duplicate: bool = Field(False, description="a face matched another upload's face")
    exact_repeat: bool = Field(False, description="byte-identical to an earlier upload")
    faces: int = 0
    matched_faces: int = 0
    matched_analyses: list[str] = Field(default_factory=list, description="up to 5 ids")


class AnalysisReviewed(AnalysisPublic):
    """``GET /v1/analyses/{id}`` as an admin or moderate key sees another key's analysis."""

    query_attack_suspected: bool = Field(
        False, description="the submitting key is suspected of a query-based attack campaign"
    )
    query_attack_reason: str | None = None
    guard: GuardReview | None = None


class AnalysisWithFrames(AnalysisPublic):
    """200 answer of ``POST /v1/analyze`` when the job finished within ``wait``."""

    frames: list[FramePublic] = Field(default_factory=list)


class FramePage(BaseModel):
    total: int = Field(description="frames matching the filter")
    offset: int
    limit: int
    verdict: list[Verdict] | None = None
    person: int | None = Field(None, description="only frames where this person appears")
    items: list[FramePublic]


class ReadinessReport(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="check name -> 'ok' or why it failed")


class KeyEvidence(BaseModel):
    """Why the guard suspects a key (written when it was last judged)."""

    reason: str = ""
    rule: str = ""
    group: list[str] = Field(default_factory=list, description="keys judged together (links)")
    recent_uploads: int = 0
    near_duplicates: int = 0
    exact_repeats: int = 0
    examples: list[str] = Field(default_factory=list, description="near-duplicate analyses")


class KeyGuardState(BaseModel):
    """One API key as the guard sees it."""

    key_id: str
    suspected: bool
    suspected_at: datetime | None = None
    last_evidence_at: datetime | None = None
    evidence: KeyEvidence | None = None
    exact_repeats: int = Field(0, description="byte-identical re-uploads (counted apart)")
    recent_uploads: int = Field(
        0, description="its newest counted uploads inside the TTL (at most guard_recent_uploads)"
    )
    near_duplicates: int = Field(0, description="of which near-duplicates")
    links: dict[str, int] = Field(default_factory=dict,
                                  description="other key -> uploads that matched across")


class SuspectedKeys(BaseModel):
    """``GET /v1/guard/keys``: every key suspected within ``guard_suspect_ttl_s``."""

    action: str = Field(description="what suspected keys get (guard_action)")
    rule: str
    keys: list[KeyGuardState]
