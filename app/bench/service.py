"""End-to-end service benchmark: cross-request batching on vs off, measured over HTTP.

For each ``MAX_BATCH`` setting, start ``dfshield serve`` as a child process on a free loopback
port, fire concurrent analyses, and report throughput, latency percentiles and the mean model
batch size read back from ``/metrics`` (the ``dfshield_batch_size`` histogram).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from app.bench.media import make_sample_media
from app.config import get_settings

BATCH_METRIC = "dfshield_batch_size"  # histogram in app/api/metrics.py
TERMINAL = ("done", "failed")


# ---------------------------------------------------------------- the service under test
@dataclass
class ServiceRun:
    max_batch: int
    label: str
    n_requests: int
    ok: int
    failed: int
    wall_s: float
    analyses_per_s: float
    frames_per_s: float
    faces_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve"]


@contextmanager
def running_service(
    max_batch: int, port: int, workdir: Path, extra_env: dict[str, str] | None = None,
    startup_timeout_s: float = 300.0, overrides: dict[str, str] | None = None,
) -> Iterator[str]:
    """``dfshield serve`` in a child process (embedded Redis, in-process worker); yields its URL.

    Runs in ``workdir`` so no ``.env`` applies; open auth and no rate limit (a benchmark is not
    a client) unless ``overrides`` (applied last) says otherwise, e.g. keys and a Redis URL;
    the log goes to ``workdir/serve.log``.
    """
    env = {**os.environ, **(extra_env or {}),
           "DFSHIELD_HOST": "127.0.0.1", "DFSHIELD_PORT": str(port),
           "DFSHIELD_MAX_BATCH": str(max_batch), "DFSHIELD_DATA_DIR": str(workdir / "data"),
           "DFSHIELD_REDIS_URL": "", "DFSHIELD_ENVIRONMENT": "development",
           "DFSHIELD_API_KEYS": "", "DFSHIELD_AUTH_DISABLED": "true",
           "DFSHIELD_RATE_LIMIT_PER_MIN": "0", "DFSHIELD_QUEUE_MAX": "10000",
           **(overrides or {})}
    log_path = workdir / f"serve-b{max_batch}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_serve_command(), cwd=workdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(url, proc, startup_timeout_s, log_path)
            yield url
        finally:
            _stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dfshield serve exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"dfshield serve not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # graceful: worker stops, embedded Redis saves
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def batch_histogram(metrics_text: str) -> tuple[float, float]:
    """(_sum, _count) of the model batch size histogram in a /metrics exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for fam in text_string_to_metric_families(metrics_text):
        for s in fam.samples:
            if s.name == f"{BATCH_METRIC}_sum":
                total += s.value
            elif s.name == f"{BATCH_METRIC}_count":
                count += s.value
    return total, count


# ---------------------------------------------------------------- load
@dataclass
class _Outcome:
    latency_s: float
    ok: bool
    frames: int
    faces: int
    t_done: float


def _analyze_once(client: httpx.Client, media: Path, form: dict[str, str], poll_s: float,
                  timeout_s: float) -> _Outcome:
    t0 = time.perf_counter()
    while True:  # honour backpressure: 429/503 carry Retry-After
        with media.open("rb") as fh:
            resp = client.post("/v1/analyze", files={"file": (media.name, fh)}, data=form)
        if resp.status_code not in (429, 503):
            break
        time.sleep(float(resp.headers.get("Retry-After", "1")))
    resp.raise_for_status()
    location = resp.headers["Location"]
    body = resp.json()
    while body.get("status") not in TERMINAL:
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"{location} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
        body = client.get(location).raise_for_status().json()
    t_done = time.perf_counter()
    faces = sum((body.get("summary") or {}).get("faces", {}).values())
    frames = (body.get("progress") or {}).get("frames_done") or 0
    return _Outcome(t_done - t0, body["status"] == "done", frames, faces, t_done)


def _fire(url: str, media: Path, n: int, concurrency: int, form: dict[str, str],
          poll_s: float, timeout_s: float) -> tuple[list[_Outcome], float]:
    with httpx.Client(base_url=url, timeout=60) as client, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(_analyze_once, client, media, form, poll_s, timeout_s)
                   for _ in range(n)]
        outcomes = [f.result() for f in futures]
    return outcomes, max(o.t_done for o in outcomes) - t0


def _summarise(b: int, label: str, outcomes: list[_Outcome], wall: float,
               batch_delta: tuple[float, float]) -> ServiceRun:
    lat_ms = np.array([o.latency_s * 1000 for o in outcomes if o.ok] or [np.nan])
    done = [o for o in outcomes if o.ok]
    p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99])
    bsum, bcount = batch_delta
    return ServiceRun(
        max_batch=b, label=label, n_requests=len(outcomes), ok=len(done),
        failed=len(outcomes) - len(done), wall_s=wall, analyses_per_s=len(done) / wall,
        frames_per_s=sum(o.frames for o in done) / wall,
        faces_per_s=sum(o.faces for o in done) / wall,
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
        mean_batch=bsum / bcount if bcount else None,
    )


def bench_service(
    n_requests: int = 16,
    concurrency: int = 8,
    max_frames: int = 8,
    media: Path | None = None,
    batch_sizes: Sequence[int | None] = (1, None),
    port: int | None = None,
    xai_method: str | None = None,
    extra_env: dict[str, str] | None = None,
    warmup: int = 1,
    poll_s: float = 0.1,
    request_timeout_s: float = 600.0,
) -> list[ServiceRun]:
    """One ``dfshield serve`` per ``MAX_BATCH`` value (None = the configured default).

    ``warmup`` analyses run first and are left out of every figure (the batch histogram is
    read before and after the measured load, and the difference is used).
    """
    default = get_settings().max_batch
    form = {"max_frames": str(max_frames)} | ({"xai_method": xai_method} if xai_method else {})
    runs = []
    with tempfile.TemporaryDirectory(prefix="dfshield-bench-") as tmp:
        work = Path(tmp)
        media = media or make_sample_media(work / "media")
        for b in batch_sizes:
            size = default if b is None else b
            label = f"{size} (default)" if b is None or b == default else str(size)
            with running_service(size, port or free_port(), work, extra_env) as url:
                for _ in range(warmup):
                    _fire(url, media, 1, 1, form, poll_s, request_timeout_s)
                before = batch_histogram(httpx.get(f"{url}/metrics").text)
                outcomes, wall = _fire(url, media, n_requests, concurrency, form, poll_s,
                                       request_timeout_s)
                after = batch_histogram(httpx.get(f"{url}/metrics").text)
            delta = (after[0] - before[0], after[1] - before[1])
            runs.append(_summarise(size, label, outcomes, wall, delta))
    return runs


def print_service(runs: Sequence[ServiceRun], console: Console | None = None) -> None:
    """A table of the runs, and each run's ratio to the MAX_BATCH=1 run."""
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title="dfshield serve under load (end-to-end, HTTP)")
    for col in ("MAX_BATCH", "ok/n", "analyses/s", "frames/s", "faces/s", "p50 ms", "p95 ms",
                "p99 ms", "mean batch"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r.label, f"{r.ok}/{r.n_requests}", f"{r.analyses_per_s:.2f}",
                      f"{r.frames_per_s:.1f}", f"{r.faces_per_s:.1f}", f"{r.p50_ms:.0f}",
                      f"{r.p95_ms:.0f}", f"{r.p99_ms:.0f}",
                      "-" if r.mean_batch is None else f"{r.mean_batch:.2f}")
    console.print(table)
    base = next((r for r in runs if r.max_batch == 1), None)
    for r in runs:
        if base is None or r is base or not base.analyses_per_s:
            continue
        speedup = r.analyses_per_s / base.analyses_per_s
        console.print(f"MAX_BATCH={r.label} vs 1: throughput x{speedup:.2f}, "
                      f"p50 latency x{r.p50_ms / base.p50_ms:.2f}")
