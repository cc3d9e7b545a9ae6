"""Process launchers behind ``dfshield serve | api | worker``.

- ``run_serve``: all in one process: embedded Redis (unless ``redis_url``), an in-process
  worker (same code as a worker process) and the API. The default for a laptop or one GPU box.
- ``run_api``: the stateless API only (scale out); needs ``redis_url``.
- ``run_worker``: one worker (one per GPU); needs ``redis_url``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn

from app.config import Settings
from app.logs import configure_logging
from app.redis_conn import RedisHandle, connect
from app.webhooks import check_secret

log = logging.getLogger("app.service")


class _Server(uvicorn.Server):
    """uvicorn re-raises the SIGTERM/SIGINT it caught once it has shut down, which would kill
    the process before the worker and the embedded Redis stop; here the signal only stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self.handle_exit) for s in sigs}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _uvicorn(app: object, settings: Settings) -> uvicorn.Server:
    # log_config=None: keep our JSON logging; the request middleware writes the access log.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, proxy_headers=True, server_header=False)
    return _Server(config)


def _banner(mode: str, settings: Settings, handle: RedisHandle, **more: object) -> None:
    log.info(
        f"dfshield {mode} starting",
        extra={"api": f"http://{settings.host}:{settings.port}", "redis": handle.mode,
               "data_dir": str(settings.data_dir), "environment": settings.environment, **more},
    )


def security_checks(settings: Settings, *, api: bool, worker: bool) -> None:
    """Refuse insecure production settings before anything starts; warn about risky ones.

    Raises ``AuthConfigError`` (bad ``DFSHIELD_API_KEYS``, or an open API in production) and
    ``ValueError`` (development or short webhook secret in production). The open-mode warning
    itself is logged by ``create_app``.
    """
    if api:
        from app.api.auth import build_keyring

        build_keyring(settings)
    check_secret(settings)
    if worker and settings.webhook_secret == Settings.model_fields["webhook_secret"].default:
        log.warning("webhooks are signed with the development secret; set "
                    "DFSHIELD_WEBHOOK_SECRET (production refuses to start without it)")
    if settings.webhook_allow_private:
        log.warning("DFSHIELD_WEBHOOK_ALLOW_PRIVATE=true: callback URLs may point at loopback, "
                    "private and link-local addresses (SSRF risk); use only in development")


def run_serve(settings: Settings) -> None:
    """API + in-process worker (+ embedded Redis when no ``redis_url``) until SIGINT/SIGTERM."""
    configure_logging(settings.log_level, settings.log_json)
    from app.api.main import create_app
    from app.worker.main import Worker

    security_checks(settings, api=True, worker=True)
    handle = connect(settings, allow_embedded=True)
    worker = Worker(settings, handle.client)
    try:
        # Models load in the background: the API answers at once and /readyz says "loading".
        worker.start(background=True)
        app = create_app(settings, handle.client, local_worker=worker)
        _banner("serve", settings, handle, device=settings.device,
                worker_concurrency=settings.worker_concurrency, models_dir=str(settings.models_dir))
        _uvicorn(app, settings).run()
    finally:
        worker.stop()
        handle.close()


def run_api(settings: Settings) -> None:
    """The API only, against the shared Redis at ``settings.redis_url``."""
    configure_logging(settings.log_level, settings.log_json)
    from app.api.main import create_app

    security_checks(settings, api=True, worker=False)
    handle = connect(settings, allow_embedded=False)
    try:
        _banner("api", settings, handle)
        _uvicorn(create_app(settings, handle.client), settings).run()
    finally:
        handle.close()


def run_worker(settings: Settings) -> None:
    """One worker process against ``settings.redis_url``; stops cleanly on SIGTERM."""
    configure_logging(settings.log_level, settings.log_json)
    from app.worker.main import Worker

    security_checks(settings, api=False, worker=True)
    handle = connect(settings, allow_embedded=False)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.host)
    log.info("dfshield worker starting",
             extra={"redis": handle.mode, "device": settings.device,
                    "concurrency": settings.worker_concurrency,
                    "metrics_port": settings.worker_metrics_port or None})
    try:
        Worker(settings, handle.client).run_forever()
    finally:
        handle.close()
