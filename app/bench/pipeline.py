"""In-process per-face cost of the method's stages with the served models (the paper's overhead
table: g alone, g + XAI map, g + XAI + d), on random crops of the detector's input size.
g and d run in the chosen backend (torch or ONNX Runtime); XAI maps always come from torch.

Peak memory: on CUDA the allocator's peak for the stage; on CPU the process's peak RSS (VmHWM,
reset before each stage through /proc/self/clear_refs), i.e. models and libraries included.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from app.config import get_settings
from app.pipeline.analyze import Analyzer, crops_to_tensor
from app.pipeline.explain import XAI_METHODS
from app.pipeline.fused import FUSED_METHODS
from app.runtime import Backend
from app.schemas import Thresholds

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PipelineRow:
    stage: str  # "g", "g + saliency", "g + saliency + d", ...
    ms_per_face: float
    overhead_pct: float | None  # vs g alone
    peak_mem_mb: float | None


@dataclass
class PipelineReport:
    device: str
    backend: str  # "torch" or "onnxruntime <provider>"
    crop_size: int
    batch: int
    repeats: int
    torch_threads: int
    models: list[str]
    rows: list[PipelineRow] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # "5" resets this process's peak RSS (Linux >= 4.0)
        _CLEAR_REFS.write_text("5")


def _peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _time_stage(fn: Callable[[], object], device: torch.device, repeats: int,
                warmup: int) -> tuple[float, float | None]:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs, and peak MB."""
    for _ in range(warmup):
        fn()
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak_mb(device)


def _stages(analyzer: Analyzer, x: torch.Tensor,
            methods: Sequence[str]) -> list[tuple[str, Callable[[], object]]]:
    def autocast() -> AbstractContextManager[object]:  # as Analyzer.score_crops does
        return torch.autocast("cuda", dtype=torch.float16) if analyzer.amp else nullcontext()

    def g() -> torch.Tensor:
        with autocast():
            return analyzer.g.p_fake(x)

    def g_xai(method: str) -> Callable[[], torch.Tensor]:
        return lambda: (g(), analyzer.explainer(method).maps(x))[1]

    def g_xai_d(method: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            maps = g_xai(method)()
            with autocast():
                return analyzer.d.p_attacked(x, maps)

        return run

    stages: list[tuple[str, Callable[[], object]]] = [("g", g)]
    stages += [(f"g + {m}", g_xai(m)) for m in methods]
    stages += [(f"g + {m} + d", g_xai_d(m)) for m in methods]
    return stages + _analyzer_stages(analyzer, x, methods)


def all_real(analyzer: Analyzer) -> Thresholds:
    """The analyzer's thresholds with every face called real (each needs its map and d)."""
    return Thresholds.model_construct(tau_fake=2.0, tau_attacked=analyzer.thresholds.tau_attacked)


def uint8_crops(x: torch.Tensor) -> list[np.ndarray]:
    """[B,3,H,W] crops in [0,1] as the HxWx3 uint8 arrays ``score_crops`` takes."""
    return list((x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())


def _analyzer_stages(analyzer: Analyzer, x: torch.Tensor,
                     methods: Sequence[str]) -> list[tuple[str, Callable[[], object]]]:
    """Analyzer.score_crops with every face called real (each needs its map and d), on the
    separate path (g, then captum) and the fused one (app.pipeline.fused)."""
    if analyzer.backend != "torch" or analyzer.amp:
        return []  # the fused path runs only there
    crops, th = uint8_crops(x), all_real(analyzer)
    stages: list[tuple[str, Callable[[], object]]] = []
    for m in (m for m in methods if m in FUSED_METHODS):
        for mode in ("off", "on"):
            a = Analyzer(analyzer.bundle, analyzer.device, th, m, amp=False, xai_fused=mode)
            label = "separate" if mode == "off" else "fused"
            stages.append((f"score_crops {m} + d, {label}",
                           lambda a=a, m=m: a.score_crops(crops, [m] * len(crops))))
    return stages


def bench_pipeline(
    batch: int = 8,
    repeats: int = 5,
    methods: Sequence[str] = XAI_METHODS,
    device: str | None = None,
    warmup: int = 1,
    seed: int = 0,
    backend: Backend | None = None,
) -> PipelineReport:
    """Per-face milliseconds and peak memory of each stage combination, bundled models.

    ``backend`` overrides DFSHIELD_BACKEND for g and d.
    """
    if batch < 1 or repeats < 1:
        raise ValueError("batch and repeats must be >= 1")
    settings = get_settings()
    if backend is not None:
        settings = settings.model_copy(update={"backend": backend})
    analyzer = Analyzer.from_settings(settings, device)
    rng = np.random.default_rng(seed)
    size = analyzer.crop_size
    crops = list(rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8))
    x = crops_to_tensor(crops, analyzer.device)
    report = PipelineReport(
        device=str(analyzer.device), backend=analyzer.runtime, crop_size=size, batch=batch,
        repeats=repeats, torch_threads=torch.get_num_threads(),
        models=[f"{m.name}@{m.version}" for m in analyzer.models],
    )
    base_ms = None
    for name, fn in _stages(analyzer, x, methods):
        secs, peak = _time_stage(fn, analyzer.device, repeats, warmup)
        ms = secs * 1000 / batch
        base_ms = base_ms or ms
        overhead = None if name == "g" else (ms / base_ms - 1) * 100
        report.rows.append(PipelineRow(name, ms, overhead, peak))
    return report


def print_pipeline(report: PipelineReport, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    where = "GPU memory peak" if report.device.startswith("cuda") else "process peak RSS"
    table = Table(title=f"per-face cost on {report.device}, g and d in {report.backend}: "
                        f"batch {report.batch}, "
                        f"{report.crop_size}px crops, median of {report.repeats}, "
                        f"{report.torch_threads} threads")
    for col in ("stage", "ms/face", "vs g", f"{where} MB"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in report.rows:
        table.add_row(r.stage, f"{r.ms_per_face:.2f}",
                      "-" if r.overhead_pct is None else f"{r.overhead_pct:+.0f} %",
                      "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}")
    console.print(table)
    console.print(f"models: {', '.join(report.models)}")
