"""A 2 GiB upload made on the fly, an API process to aim it at, and its peak RSS.

Shared by ``tests/service/test_hostile_corpus.py`` (asserts the bound) and
``benchmarks/hostile_upload_rss.py`` (prints the figures). The API runs as its own process
(``python -m app.cli api``) so its memory is its own, not the test runner's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx

from app.config import REPO_ROOT

GiB = 1 << 30
MiB = 1 << 20
BOUNDARY = "hostile2gib"
CHUNK = MiB  # one generator step; the same buffer is yielded again and again


_HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
         f'filename="huge.mp4"\r\nContent-Type: video/mp4\r\n\r\n').encode()
_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def body_length(total: int) -> int:
    """The true Content-Length of :func:`multipart_body` for a ``total``-byte file."""
    return len(_HEAD) + total + len(_TAIL)


BODY_MAX_S = 120.0  # loopback carries 2 GiB in well under this; a refusal takes < 1 s


class BodyTooSlow(RuntimeError):
    """The body generator's wall-clock guard tripped."""


def multipart_body(total: int, sent: list[int], chunk: int = CHUNK,
                   max_seconds: float = BODY_MAX_S) -> Iterator[bytes]:
    """A multipart body whose ``file`` part holds ``total`` zero bytes, made as it is read.

    ``sent[0]`` counts the bytes handed to the transport so far; nothing is ever held
    beyond one ``chunk``. Past ``max_seconds`` it raises: a server that keeps reading instead
    of refusing then fails the test in bounded time instead of stalling the suite.
    """
    head = _HEAD
    block = b"\0" * chunk
    sent[0] += len(head)
    yield head
    left, deadline = total, time.monotonic() + max_seconds
    while left > 0:
        if time.monotonic() > deadline:
            raise BodyTooSlow(f"still sending after {max_seconds:.0f} s ({sent[0]} bytes)")
        piece = block if left >= chunk else block[:left]
        left -= len(piece)
        sent[0] += len(piece)
        yield piece
    sent[0] += len(_TAIL)
    yield _TAIL


@dataclass
class RssSampler:
    """Samples VmRSS of ``pid`` every ``period`` s in a thread; ``peak`` is the highest seen.

    The kernel's own high-water mark (VmHWM) is read too: it cannot miss a short spike
    between two samples."""

    pid: int
    period: float = 0.01
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            self._stop.wait(self.period)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spawn_api(redis_url: str, data_dir: Path, port: int, log: Path,
              **env_over: str) -> ApiProcess:
    """``dfshield api`` in its own process, ready (``/healthz``) when this returns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSHIELD_")}
    env.update({"DFSHIELD_DATA_DIR": str(data_dir), "DFSHIELD_RATE_LIMIT_PER_MIN": "0",
                "DFSHIELD_LOG_LEVEL": "WARNING", **env_over})
    cmd = [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port),
           "--redis-url", redis_url]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    api = ApiProcess(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    api.stop()
    raise RuntimeError("the API did not answer /healthz within 60 s")


@dataclass
class UploadOutcome:
    status: int | None  # None: no response came back (connection closed first)
    body: dict | None
    sent: int  # body bytes the generator produced before the transport stopped taking them
    seconds: float
    error: str | None = None


def stream_upload(url: str, total: int, content_length: int | None = None,
                  timeout: float = 60.0) -> UploadOutcome:
    """POST a ``total``-byte file part generated on the fly; chunked unless ``content_length``
    is given (which may lie about the real size)."""
    sent = [0]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    t0 = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout) as client:
            resp = client.post(f"{url}/v1/analyze", content=multipart_body(total, sent),
                               headers=headers)
        body = resp.json() if resp.headers.get("content-type", "").endswith("json") else None
        return UploadOutcome(resp.status_code, body, sent[0], time.perf_counter() - t0)
    except (httpx.TransportError, h11.LocalProtocolError) as e:
        # No response: the server closed first, or (a lying length) h11 stopped the client.
        return UploadOutcome(None, None, sent[0], time.perf_counter() - t0, repr(e))


def raw_upload(port: int, total: int, content_length: int | None = None,
               timeout: float = 60.0) -> UploadOutcome:
    """The same body over a bare socket, reading while sending: the answer is seen the
    moment the server sends it, and ``sent`` says how far the server let the body get.
    Chunked unless ``content_length`` (true or not) is given."""
    sent = [0]
    chunked = content_length is None
    length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % content_length
    head = (b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\n" + length +
            f"\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
    answer, t0 = b"", time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for piece in multipart_body(total, sent):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if answer := _poll(sock):
                    break
            else:
                sock.sendall(b"0\r\n\r\n" if chunked else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed: whatever it answered is still readable
        answer = _read_rest(sock, timeout, answer)
    return _parse(answer, sent[0], time.perf_counter() - t0)


def _poll(sock: socket.socket) -> bytes:
    ready, _, _ = select.select([sock], [], [], 0)
    return sock.recv(65536) if ready else b""


def _complete(data: bytes) -> bool:
    """A whole answer: headers and a JSON body, or a plain (uvicorn) answer of known length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.rstrip().endswith(b"}")


def _read_rest(sock: socket.socket, timeout: float, data: bytes) -> bytes:
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while not _complete(data) and (chunk := sock.recv(65536)):
            data += chunk
    return data


def _parse(answer: bytes, sent: int, seconds: float) -> UploadOutcome:
    if not answer.startswith(b"HTTP/1.1 "):
        return UploadOutcome(None, None, sent, seconds, f"no HTTP answer: {answer[:80]!r}")
    status = int(answer[9:12])
    _, _, raw = answer.partition(b"\r\n\r\n")
    try:
        body = json.loads(raw[raw.index(b"{"):]) if b"{" in raw else None
    except ValueError:
        body = None
    return UploadOutcome(status, body, sent, seconds)


@dataclass
class Variant:
    name: str
    send: Callable[[str, int], UploadOutcome]  # (url, port) -> outcome
    max_sent: int  # body bytes the server may take before it refuses
    statuses: tuple[int, ...]  # acceptable answers; None in an outcome = no answer at all
    codes: tuple[str | None, ...]


def variants(cap: int, total: int = 2 * GiB) -> list[Variant]:
    """The 2 GiB upload four ways. ``max_sent`` allows 32 MiB of socket buffers in flight."""
    slack = 32 * MiB
    lie = 100 * MiB  # below the cap: the server reads exactly this much, then garbage
    true_length = body_length(total)
    return [
        Variant("httpx, chunked", lambda u, p: stream_upload(u, total), cap + slack,
                (413,), ("file_too_large",)),
        Variant("socket, chunked", lambda u, p: raw_upload(p, total), cap + slack,
                (413,), ("file_too_large",)),
        Variant("socket, true Content-Length 2 GiB", lambda u, p: raw_upload(p, total,
                true_length), slack, (413,), ("file_too_large",)),
        # The bytes past the claimed length read as a second, invalid request: uvicorn
        # answers 400 and closes; the upload itself ends as upload_incomplete (logged).
        Variant("socket, Content-Length lies (100 MiB)", lambda u, p: raw_upload(p, total, lie),
                lie + slack, (400,), (None, "upload_incomplete")),
    ]


@dataclass
class Measured:
    variant: Variant
    outcome: UploadOutcome
    rss_before: int
    rss_peak: int  # sampled VmRSS peak during this variant


def measure(api: ApiProcess, port: int, cap: int) -> list[Measured]:
    """Warm the upload path, then send each variant while sampling the API's RSS."""
    raw_upload(port, MiB)  # first upload: lazy imports and allocator pools settle here
    rows = []
    for v in variants(cap):
        before = proc_status(api.proc.pid)["VmRSS"]
        with RssSampler(api.proc.pid) as sampler:
            outcome = v.send(api.url, port)
        rows.append(Measured(v, outcome, before, max(sampler.peak, before)))
    return rows


def stalled_upload(port: int, declared: int = 10 * MiB, send: int = 1000,
                   timeout: float = 30.0) -> tuple[UploadOutcome, bool]:
    """Promise ``declared`` bytes, send the first ``send`` of them, then nothing.

    Returns the answer and whether the server closed the connection after it."""
    head = (b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (declared,
                                                                       BOUNDARY.encode()))
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + (_HEAD + b"\0" * send)[:send])
        answer = _read_rest(sock, timeout, b"")
        seconds = time.perf_counter() - t0
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = False
    return _parse(answer, send, seconds), closed


def abandoned_upload(port: int, send: int = 4 * MiB) -> None:
    """Start a chunked upload, send ``send`` bytes of it, then hang up without a word."""
    head = (b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % BOUNDARY.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for piece in multipart_body(send, [0]):
            if piece.startswith(b"\r\n--"):
                break  # the closing boundary never comes
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
