"""``bench all --service`` in its quick form against real ``dfshield serve`` processes on
loopback: batching runs, the WORKER_CONCURRENCY sweep and the frames/s target row."""

from __future__ import annotations

from app.bench.service_figures import FILED_FRAMES_S, service_figures


def test_quick_service_section_measures_each_configuration() -> None:
    figures = service_figures(quick=True, grid=(1,))
    by_name = {f.name: f for f in figures}
    for name in ("MAX_BATCH=1 frames", "WORKER_CONCURRENCY=1 frames"):
        assert name in by_name, sorted(by_name)
        assert by_name[name].value > 0 and by_name[name].unit == "frames/s"
    assert any(n.startswith("MAX_BATCH=") and n.endswith("(default) frames") for n in by_name)
    target = by_name[f"best frames/s over the filed {FILED_FRAMES_S:g}"]
    best = max(f.value for f in figures if f.name.startswith("WORKER_CONCURRENCY")
               and f.unit == "frames/s")
    assert abs(target.value - best / FILED_FRAMES_S) < 1e-9 and target.target is not None
