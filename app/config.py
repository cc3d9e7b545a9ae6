"""Service and pipeline settings, read from the environment with the ``DFSHIELD_`` prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
XaiFused = Literal["auto", "on", "off"]
XaiMethod = Literal["saliency", "guided_backprop", "input_x_gradient", "integrated_gradients"]
DeviceName = Literal["auto", "cpu", "cuda"]
GuardAction = Literal["flag", "verdict_only", "throttle", "reject"]
ScoreExposure = Literal["full", "rounded", "verdict"]


class Settings(BaseSettings):
    """Every tunable of dfshield. Each field maps to ``DFSHIELD_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DFSHIELD_", env_file=".env", extra="ignore")

    # --- runtime ---
    environment: Literal["development", "production"] = "development"
    device: DeviceName = "auto"
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    amp: bool = Field(True, description="autocast g/d forward on CUDA (never on CPU)")
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="runtime of g and d: torch or ONNX Runtime (XAI stays in torch)"
    )
    models_dir: Path = REPO_ROOT / "models"
    data_dir: Path = Path.home() / ".cache" / "dfshield"

    # --- method ---
    xai_method: XaiMethod = "saliency"
    # Moderators need to see why g called a face fake; costs one extra XAI pass per such face.
    explain_fake: bool = Field(
        True, description="heatmap of g's fake logit for faces g called fake (no d on it)"
    )
    fold_batchnorm: bool = Field(
        True, description="serve g and d with BatchNorm folded into the convs (app.models.fast)"
    )
    xai_fused: XaiFused = Field(
        "auto", description="Saliency/Input×Gradient from g's own forward (app.pipeline.fused): "
        "auto = when most faces need a map, on, off"
    )
    # None = use the thresholds the manifest chose on validation data (0.5 if it has none).
    tau_fake: float | None = Field(None, ge=0.0, le=1.0)
    tau_attacked: float | None = Field(None, ge=0.0, le=1.0)
    # Each face costs one g forward, plus Saliency + d when g calls it real (README: cost per face).
    max_faces: int = Field(16, ge=1, description="faces analysed per frame, largest first")
    min_face_size: int = Field(40, ge=10)
    face_scale: float = Field(1.3, gt=1.0)
    face_prob_min: float = Field(0.9, ge=0.0, le=1.0)
    face_detect_max_side: int = Field(1280, ge=64, description="frames shrunk for MTCNN only")
    face_batch_size: int = Field(8, ge=1, description="same-size frames per MTCNN pass")
    # 0.5 halves MTCNN's cost at the same recall (bench all, app/bench/face_res.py) but moves
    # boxes more between near-identical uploads, which the query-attack guard is calibrated on.
    face_pyramid_factor: float = Field(
        0.709, ge=0.3, lt=0.95, description="MTCNN pyramid scale step (MTCNN's default)")
    # Faces under either bar are reported with their scores but judged `uncertain` (no vote).
    quality_min_face_px: float = Field(
        64.0, ge=0.0, description="face box side (original px) below which: face_too_small"
    )
    quality_min_sharpness: float = Field(
        0.6, ge=0.0, description="var(Laplacian)/var(grey) of the face below which: blurry"
    )

    # --- input limits ---
    max_upload_mb: float = Field(200.0, gt=0)
    upload_idle_timeout_s: float = Field(
        30.0, ge=0, description="an upload sending no bytes this long is dropped (408); 0 = never"
    )
    max_video_seconds: float = Field(600.0, gt=0)
    max_frames: int = Field(32, ge=1, description="frames sampled evenly per video")
    max_frames_cap: int = Field(256, ge=1, description="upper bound a client may ask for")
    sample_window: float = Field(
        0.5, ge=0.0, le=0.5, description="long videos: a sample may be the cheapest frame "
        "(a keyframe) within this fraction of the sampling interval of its time; 0 = exact"
    )
    max_width: int = Field(4096, ge=16)
    max_height: int = Field(4096, ge=16)
    max_image_pixels: int = Field(40_000_000, ge=256)

    # --- service ---
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(20.0, ge=0)
    queue_max: int = Field(100, ge=1)
    result_ttl_s: int = Field(86_400, ge=60)
    visibility_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    job_timeout_s: float = Field(
        900.0, ge=0, description="deadline of one attempt of a job, then failed `timeout`; 0 = none"
    )
    keep_media: bool = False
    api_keys: str = Field("", description="comma list of key:role[+role]; empty = open")
    auth_disabled: bool = Field(False, description="explicitly allow open mode in production")
    rate_limit_per_min: int = Field(120, ge=0, description="per key; 0 = unlimited")
    webhook_secret: str = "dev-webhook-secret"
    webhook_allow_private: bool = False
    heartbeat_ttl_s: float = Field(15.0, gt=0)
    worker_concurrency: int = Field(2, ge=1, description="job threads per worker process")
    worker_frame_chunk: int = Field(4, ge=1, description="frames per MTCNN pass in the worker")
    worker_metrics_port: int = Field(0, ge=0, description="worker-only process; 0 = off")
    queue_retry_after_s: int = Field(10, ge=1, description="Retry-After sent with queue_full")
    sync_wait_max_s: float = Field(60.0, ge=0, description="cap on the analyze `wait` field")
    log_level: str = "INFO"
    log_json: bool = True

    # --- moderator UI (/ui) ---
    ui_session_ttl_s: int = Field(8 * 3600, ge=60, description="UI login lifetime (seconds)")
    ui_page_size: int = Field(25, ge=1, le=200, description="analyses per page of the UI list")
    ui_list_max: int = Field(
        1000, ge=1, description="newest analyses the UI list filters and pages over"
    )

    # --- guard: stateful detection of query-based attack campaigns (app/guard, README) ---
    guard_enabled: bool = Field(True, description="fingerprint faces and judge keys")
    # Never logged (SecretStr); unset: a random salt is generated once and kept in Redis.
    guard_salt: SecretStr | None = Field(None, description="secret salt of the fingerprints")
    guard_hashes: int = Field(
        20, ge=4, le=64, description="hashes kept per face (top-S, half per view)"
    )
    guard_match_threshold: int = Field(
        3, ge=1, description="near-duplicate: a face shares more than this many in one view"
    )
    guard_ttl_s: int = Field(86_400, ge=1, description="memory lifetime of fingerprints")
    guard_bucket_cap: int = Field(64, ge=1, description="faces kept per hash bucket, newest")
    guard_min_matches: int = Field(
        6, ge=1, description="near-duplicate uploads among a group's recent ones to suspect it"
    )
    guard_recent_uploads: int = Field(20, ge=1, description="recent uploads the rule looks at")
    guard_link_min: int = Field(
        2, ge=1, description="cross-key matching uploads that link two keys into one group"
    )
    guard_group_max: int = Field(32, ge=1, description="keys followed through links per group")
    guard_suspect_ttl_s: int = Field(
        86_400, ge=1, description="a key stays suspected this long after its last evidence"
    )
    guard_action: GuardAction = Field(
        "flag", description="what suspected keys get: flag | verdict_only | throttle | reject"
    )
    guard_throttle_per_min: int = Field(
        2, ge=1, description="submits per minute left to a suspected key (action throttle)"
    )
    score_exposure: ScoreExposure = Field(
        "full", description="scores shown to keys without admin/moderate: full|rounded|verdict"
    )

    @model_validator(mode="after")
    def _guard_threshold_reachable(self) -> Settings:
        # Each view keeps guard_hashes // 2 hashes: a threshold at or above that never matches.
        if self.guard_match_threshold >= self.guard_hashes // 2:
            raise ValueError(
                f"guard_match_threshold ({self.guard_match_threshold}) must be below "
                f"guard_hashes // 2 ({self.guard_hashes // 2}), the hashes kept per view"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """Settings built once per process (not at import, so tests can set env first)."""
    return Settings()
