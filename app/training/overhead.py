"""Table 9: time and peak memory per face for g alone, g + each XAI method, and g + XAI + d.

Stages are timed as the service runs them (batched, g under no_grad, the XAI pass in fp32).
Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident
set (VmHWM), reset before each stage through ``/proc/self/clear_refs`` where Linux allows it
(tracemalloc cannot see torch's allocator), else reported as not resettable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.pipeline.explain import Explainer


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> bool:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _current_mb(dev: torch.device) -> float | None:
    if dev.type == "cuda":
        return torch.cuda.memory_allocated(dev) / 2**20
    return _proc_mb("VmRSS")


def _peak_mb(dev: torch.device) -> float | None:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return _proc_mb("VmHWM")


def _time(fn: Callable[[], object], repeats: int, dev: torch.device) -> dict[str, float | None]:
    """Median seconds per call after a warm-up; peak memory and its rise over the start."""
    fn()
    _sync(dev)
    before = _current_mb(dev)
    resettable = _reset_peak(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = _peak_mb(dev) if resettable else None
    rise = None if peak is None or before is None else max(peak - before, 0.0)
    return {"seconds": times[len(times) // 2], "peak_mb": peak, "rise_mb": rise}


def _row(t: dict[str, float | None], batch: int) -> dict[str, float | None]:
    return {"ms_per_face": 1000 * (t["seconds"] or 0.0) / batch, "peak_mb": t["peak_mb"],
            "rise_mb": t["rise_mb"]}


def measure_overhead(
    g: nn.Module,
    d: nn.Module | None,
    xai_methods: Sequence[str],
    batch: int = 8,
    repeats: int = 5,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Milliseconds per face and peak memory for each pipeline stage."""
    dev = device or next(g.parameters()).device
    size = g.input_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    rows: dict[str, dict[str, float | None]] = {}

    def g_only() -> torch.Tensor:
        with torch.no_grad():
            return g(x)

    rows["g"] = _row(_time(g_only, repeats, dev), batch)
    for method in xai_methods:
        ex = Explainer(g, method)

        def with_xai(ex: Explainer = ex) -> torch.Tensor:
            g_only()
            return ex.maps(x)

        rows[f"g+{method}"] = _row(_time(with_xai, repeats, dev), batch)
        if d is not None:
            def full(ex: Explainer = ex) -> torch.Tensor:
                maps = with_xai(ex)
                with torch.no_grad():
                    return d(x, maps)

            rows[f"g+{method}+d"] = _row(_time(full, repeats, dev), batch)
    base = rows["g"]["ms_per_face"] or 1e-9
    for row in rows.values():
        row["overhead_pct"] = 100.0 * ((row["ms_per_face"] or 0.0) / base - 1.0)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "repeats": repeats,
        "input_size": size,
        "ig_steps": Explainer(g, "integrated_gradients").ig_steps,
        "memory": "cuda max_memory_allocated" if dev.type == "cuda"
        else "process peak RSS (VmHWM)",
        "rows": rows,
    }
