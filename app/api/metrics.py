"""Prometheus metrics, on the default registry.

The API and an in-process worker (``dfshield serve``) share one registry, so ``/metrics`` shows
both. A worker-only process (``dfshield worker``) exports the worker metrics on its own port
when ``worker_metrics_port`` is set; the queue gauges are refreshed at scrape time from Redis
by whichever process serves ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

STAGES = ("decode", "faces", "detector", "xai", "adversarial", "guard")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

QUEUE_DEPTH = Gauge("dfshield_queue_depth", "Jobs accepted and not finished (waiting + pending)")
QUEUE_PENDING = Gauge("dfshield_queue_pending", "Jobs delivered to a worker, not yet acknowledged")
WORKERS_LIVE = Gauge("dfshield_workers_live", "Workers with a fresh heartbeat")
BATCH_SIZE = Histogram(
    "dfshield_batch_size", "Face crops per model batch (cross-request)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
STAGE_SECONDS = Histogram(
    "dfshield_stage_seconds",
    "Pipeline stage latency: decode, faces and guard per frame chunk; detector, xai and "
    "adversarial per model batch",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
JOB_SECONDS = Histogram(
    "dfshield_job_seconds", "Job processing time in the worker, claim to result",
    buckets=_LATENCY_BUCKETS,
)
JOBS = Counter(
    "dfshield_jobs", "Job status transitions (queued by the API; done/failed/retried by workers)",
    ["status"],
)
VERDICTS = Counter(  # level: video | frame | face
    "dfshield_verdicts", "Verdicts of finished jobs", ["level", "verdict"]
)
QUERY_ATTACK_FLAGS = Counter(
    "dfshield_query_attack_flags",
    "API keys newly suspected by the guard of a query-based attack campaign",
)
SUSPECTED_KEYS = Gauge(
    "dfshield_query_attack_suspected_keys", "API keys currently suspected by the guard"
)
GUARD_UPLOADS = Counter(  # kind: new | near_duplicate | exact_repeat
    "dfshield_guard_uploads", "Uploads counted by the guard, by kind", ["kind"]
)
GUARD_FACES = Counter("dfshield_guard_faces", "Face crops fingerprinted by the guard")
HTTP_REQUESTS = Counter(
    "dfshield_http_requests", "HTTP requests", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "dfshield_http_request_seconds", "HTTP request latency", ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
