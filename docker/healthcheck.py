"""Container healthcheck: exit 0 when healthy, 1 (with a one-line reason) otherwise.

    python /opt/dfshield/healthcheck.py           # api / serve: GET /healthz on DFSHIELD_PORT
    python /opt/dfshield/healthcheck.py worker    # worker: this host's heartbeat is in Redis

A worker has no HTTP port by default, and "process alive" says little about it: a fresh
heartbeat proves its threads run and Redis is reachable. Stdlib + the installed app only
(no curl in the image).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_http() -> str | None:
    port = os.environ.get("DFSHIELD_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - fixed loopback URL
            return None if resp.status == 200 else f"{url} answered {resp.status}"
    except OSError as exc:
        return f"{url} unreachable: {exc}"


def check_worker() -> str | None:
    from app.config import Settings
    from app.redis_conn import client_from_url
    from app.worker.heartbeat import live_workers

    url = Settings().redis_url
    if not url:
        return "DFSHIELD_REDIS_URL is not set"
    host = socket.gethostname()
    try:
        live = live_workers(client_from_url(url))
    except Exception as exc:  # noqa: BLE001 - any failure is unhealthy; say which
        return f"redis unreachable: {type(exc).__name__}: {exc}"
    if any(w.get("host") == host for w in live):
        return None
    return f"no fresh worker heartbeat from host {host}"


def main(argv: list[str]) -> int:
    problem = check_worker() if argv[1:2] == ["worker"] else check_http()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
