"""Completion webhooks from the worker: a signed JSON summary POSTed when a job ends.

Delivery (``app.webhooks.deliver``: SSRF re-check, HMAC signature, retries with backoff) runs on
a small thread pool, never on a job thread, so a slow receiver delays neither the next claim
nor the model batcher. The outcome is recorded on the job (``webhook_status`` pending →
delivered | failed, ``webhook_attempts``, ``webhook_http_status``, ``webhook_error``).

Delivery is best effort across restarts: a delivery still retrying when the worker stops is
recorded as failed (the job itself is already done and acknowledged).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.config import Settings
from app.schemas import AnalysisResult, JobStatus
from app.store.results import JobRecord, ResultStore
from app.webhooks import EVENT, DeliveryResult, deliver

log = logging.getLogger(__name__)
ATTEMPTS = 5
BACKOFF_S = 1.0  # 1, 2, 4, 8 s (±50 % jitter) between the 5 attempts
TIMEOUT_S = 10.0
MAX_PARALLEL = 4


class _Stopped(Exception):
    """The worker is stopping: abandon the retries of a delivery."""


def build_payload(job: JobRecord, result: AnalysisResult | None) -> dict[str, Any]:
    """The webhook body. Links are root-relative: the worker does not know the public URL."""
    base = f"/v1/analyses/{job.id}"
    payload: dict[str, Any] = {
        "event": EVENT,
        "id": job.id,
        "status": job.status.value,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "filename": job.filename,
        "xai_method": job.xai_method,
        "links": {"analysis": base, "frames": f"{base}/frames", "ui": f"/ui/analyses/{job.id}"},
    }
    if result is not None:
        payload.update(
            xai_method=result.xai_method,
            summary=result.summary.model_dump(mode="json"),
            thresholds=result.thresholds.model_dump(mode="json"),
            models=[m.model_dump(mode="json") for m in result.models],
            media=result.media.model_dump(mode="json"),
        )
    if job.status == JobStatus.FAILED:
        payload["error"] = {"code": job.error_code or "failed",
                            "message": job.error_message or ""}
    return payload


class WebhookNotifier:
    """Call it with a finished job (the worker's on-finished step); ``stop()`` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        store: ResultStore,
        *,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        timeout_s: float = TIMEOUT_S,
        max_parallel: int = MAX_PARALLEL,
    ) -> None:
        self.settings = settings
        self.store = store
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="webhook")

    def __call__(self, job: JobRecord) -> None:
        """Schedule the delivery for ``job`` if it asked for one; returns at once."""
        if not job.callback_url or job.status not in (JobStatus.DONE, JobStatus.FAILED):
            return
        self.store.update(job.id, webhook_status="pending", webhook_attempts=0)
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # pool already shut down: the worker is stopping
            self._record(job.id, None, "the worker stopped before delivery")

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Stopped

    def _run(self, job: JobRecord) -> None:
        if self._stopping.is_set():
            self._record(job.id, None, "the worker stopped before delivery")
            return
        try:
            result = self.store.get_result(job.id) if job.status == JobStatus.DONE else None
            outcome = deliver(
                str(job.callback_url), build_payload(job, result), self.settings.webhook_secret,
                attempts=self.attempts, backoff_s=self.backoff_s, timeout_s=self.timeout_s,
                allow_private=self.settings.webhook_allow_private, sleep=self._sleep,
            )
        except _Stopped:
            self._record(job.id, None, "the worker stopped while retrying")
        except Exception as e:  # noqa: BLE001 - record it; never kill the pool thread
            log.exception("webhook delivery crashed", extra={"job_id": job.id})
            self._record(job.id, None, f"{type(e).__name__}: {e}")
        else:
            self._record(job.id, outcome)

    def _record(self, job_id: str, outcome: DeliveryResult | None, error: str = "") -> None:
        fields: dict[str, object] = {"webhook_status": "failed", "webhook_error": error}
        if outcome is not None:
            fields = {
                "webhook_status": "delivered" if outcome.delivered else "failed",
                "webhook_attempts": outcome.attempts,
                "webhook_http_status": outcome.status_code,
                "webhook_error": outcome.error,
            }
        level = logging.INFO if fields["webhook_status"] == "delivered" else logging.WARNING
        log.log(level, "webhook %s", fields["webhook_status"], extra={"job_id": job_id, **fields})
        try:
            self.store.update(job_id, **fields)
        except Exception as e:  # noqa: BLE001 - e.g. Redis closed at shutdown
            log.warning("could not record the webhook outcome of %s: %s", job_id, e)

    def stop(self) -> None:
        """Abandon retries in backoff; queued deliveries are recorded failed, not sent."""
        self._stopping.set()
        self._pool.shutdown(wait=False)
