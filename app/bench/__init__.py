"""Benchmarks; their figures are printed, never asserted.

- :func:`bench_service` / :func:`print_service`: ``dfshield serve`` under concurrent HTTP load,
  once per ``MAX_BATCH`` setting (cross-request batching off vs on).
- :func:`bench_pipeline` / :func:`print_pipeline`: in-process per-face cost of g alone,
  g + each XAI method, and g + XAI + d, with peak memory.

The CLI wires ``dfshield bench service|pipeline`` to these.
"""

from app.bench.media import make_sample_media
from app.bench.pipeline import PipelineReport, PipelineRow, bench_pipeline, print_pipeline
from app.bench.service import ServiceRun, bench_service, print_service

__all__ = [
    "PipelineReport", "PipelineRow", "ServiceRun", "bench_pipeline", "bench_service",
    "make_sample_media", "print_pipeline", "print_service",
]
