"""DATA_DIR full: 507 ``insufficient_storage`` problem+json, nothing half-written, recovery.

As root (CI, this machine) DATA_DIR is a real 1 MiB tmpfs, filled up for real. Without the
right to mount, the same test runs with writes under DATA_DIR failing with ENOSPC past a byte
budget (the reason is printed).
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

PROBLEM = "application/problem+json"
SIZE = 1 << 20


class Disk:
    """A small filesystem at ``path`` that ``fill`` fills (leaving ``free`` bytes)."""

    def __init__(self, path: Path, real: bool) -> None:
        self.path, self.real = path, real
        self.filler = path / "filler"
        self.budget: int | None = None  # simulated free bytes (None: unlimited)

    def fill(self, free: int) -> None:
        if not self.real:
            self.budget = free
            return
        with self.filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        with self.filler.open("r+b") as f:
            f.truncate(max(self.filler.stat().st_size - free, 0))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.budget = None


class _Spending:
    """A file opened for writing under the simulated disk: ENOSPC past the budget."""

    def __init__(self, raw, disk: Disk) -> None:
        self._raw, self._disk = raw, disk

    def write(self, data: bytes) -> int:
        if self._disk.budget is not None:
            if len(data) > self._disk.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._disk.budget -= len(data)
        return self._raw.write(data)

    def __getattr__(self, name: str):
        return getattr(self._raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    path = tmp_path / "data"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"\ncannot mount a tmpfs ({mounted.stderr.strip()}): simulating ENOSPC instead")
        d = Disk(path, real=False)
        real_open = pathlib.Path.open

        def open_(self: Path, mode: str = "r", *a, **kw):
            f = real_open(self, mode, *a, **kw)
            inside = str(self).startswith(str(path)) and self != d.filler
            return _Spending(f, d) if inside and ("w" in mode or "a" in mode) else f

        monkeypatch.setattr(pathlib.Path, "open", open_)
        yield d
        return
    try:
        yield Disk(path, real=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_answers_507_leaves_nothing_and_recovers(
    disk: Disk, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s = make_settings(disk.path, redis_server.url)
    api = api_factory(s, redis_client, worker_factory(s, redis_client))
    media = disk.path / "media"
    disk.fill(free=64 * 1024)  # less than the 280 KB photo
    refused = 0
    for _ in range(3):  # and it stays refused, cleanly, for as long as the disk is full
        resp = submit(api.client, IMAGE)
        assert resp.status_code == 507, resp.text
        assert resp.headers["content-type"] == PROBLEM
        body = resp.json()
        assert body["code"] == "insufficient_storage" and body["status"] == 507
        assert int(resp.headers["retry-after"]) > 0
        assert not media.exists() or list(media.iterdir()) == []  # nothing half-written
        refused += 1
    assert redis_client.xlen("dfshield:jobs") == 0  # no job was queued for them
    assert api.client.get("/healthz").status_code == 200

    disk.free()  # space comes back: no restart needed
    ok = submit(api.client, IMAGE)
    assert ok.status_code == 202, ok.text
    assert wait_for(api.client, ok.json()["id"])["status"] == "done"
    assert not media.exists() or list(media.iterdir()) == []  # processed media removed
    print(f"\ndisk full ({'tmpfs' if disk.real else 'simulated'}): {refused} uploads refused "
          "with 507, 0 partial files left, next upload done after space returned")
