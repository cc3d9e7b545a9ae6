"""``bench all --service``: app.bench.service's runs as figures — cross-request batching
(MAX_BATCH=1 against the default), the end-to-end frames/s target, and the worker's job
threads (``WORKER_CONCURRENCY``) chosen by measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.bench.csvout import Figure, Target
from app.bench.service import ServiceRun, bench_service
from app.config import get_settings

# frames/s of `bench service` (MAX_BATCH=16, 16 analyses x 8 frames, 8 clients) when the
# performance issue was filed, on this 2-core CPU (README's service table at the time).
FILED_FRAMES_S = 14.0
FRAMES_TARGET = Target(">=", 2.0)
CONCURRENCY_GRID = (1, 2, 3)


def _load(quick: bool) -> dict[str, int]:
    return ({"n_requests": 2, "concurrency": 2, "max_frames": 2} if quick
            else {"n_requests": 16, "concurrency": 8, "max_frames": 8})


def _run_figures(run: ServiceRun, name: str) -> list[Figure]:
    b = run.max_batch
    out = [Figure("service", f"{name} analyses", "http", b, run.analyses_per_s, "1/s"),
           Figure("service", f"{name} frames", "http", b, run.frames_per_s, "frames/s"),
           Figure("service", f"{name} faces", "http", b, run.faces_per_s, "faces/s")]
    out += [Figure("service", f"{name} latency {p}", "http", b, v, "ms")
            for p, v in (("p50", run.p50_ms), ("p95", run.p95_ms), ("p99", run.p99_ms))]
    if run.mean_batch is not None:
        out.append(Figure("service", f"{name} mean model batch (histogram sum/count)", "http",
                          b, run.mean_batch, "faces/batch"))
    return out


def service_figures(quick: bool, grid: Sequence[int] = CONCURRENCY_GRID) -> list[Figure]:
    """MAX_BATCH=1 and the default at the configured concurrency, then the default batch at
    each ``grid`` concurrency; the best frames/s against the filed figure."""
    load = _load(quick)
    out: list[Figure] = []
    for run in bench_service(**load):
        out += _run_figures(run, f"MAX_BATCH={run.label}")
    configured = get_settings().worker_concurrency
    best = 0.0
    for c in grid if not quick else grid[:1]:
        run = bench_service(**load, batch_sizes=(None,),
                            extra_env={"DFSHIELD_WORKER_CONCURRENCY": str(c)})[0]
        label = f"{c} (configured)" if c == configured else str(c)
        out += _run_figures(run, f"WORKER_CONCURRENCY={label}")
        best = max(best, run.frames_per_s)
    out.append(Figure("service", f"best frames/s over the filed {FILED_FRAMES_S:g}", "http",
                      None, best / FILED_FRAMES_S, "x", FRAMES_TARGET))
    return out
