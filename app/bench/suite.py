"""``dfshield bench all``: every figure of issue 10 in one run, one table, one CSV.

Sections: ``peak`` (fp32 matmul), ``forward`` (g and d over a batch curve, torch and ONNX
Runtime, % of peak), ``xai`` (each map's cost as a multiple of g's forward, d's), ``naive``
(the paper's pipeline one face at a time vs ``score_crops``), ``decode`` (ms per sampled
frame), ``faces`` (MTCNN), ``e2e`` (one video through the real pipeline) and, with
``service``, ``service`` (app.bench.service under HTTP load). Each figure sits beside its
target where the issue sets one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from app.bench.csvout import Figure, csv_path, hardware, print_figures, write_csv
from app.bench.decode import Clip, decode_figures
from app.bench.face_res import face_res_figures
from app.bench.naive import naive_figures
from app.bench.peak import forward_figures, matmul_peak, ort_matmul_peak
from app.bench.service_figures import service_figures
from app.bench.stages import e2e_figures, mtcnn_figures
from app.bench.stores import ArchSet, bundled_set, paper_set
from app.bench.xai import xai_figures
from app.config import REPO_ROOT, DeviceName, Settings, get_settings
from app.device import configure_threads, resolve_device
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "dfshield-bench"
DEFAULT_OUT = REPO_ROOT / "benchmarks"
SEPARATE_METHODS = ("saliency", "input_x_gradient", "guided_backprop")
FULL_CLIPS = (Clip("short", 10.0), Clip("long", 200.0))
QUICK_CLIPS = (Clip("short", 1.5), Clip("long", 2.0))


@dataclass(frozen=True)
class BenchConfig:
    device: DeviceName = "auto"
    repeats: int = 5
    threads: int = 0  # 0 = torch's default
    batches: tuple[int, ...] = (1, 8, 32, 64)
    xai_batch: int = 16
    naive_faces: int = 16
    paper: bool = True
    ig: bool = False
    service: bool = False
    cache_dir: Path = DEFAULT_CACHE
    out_dir: Path = DEFAULT_OUT
    peak_n: int = 2048
    peak_tries: int = 5
    clips: tuple[Clip, ...] = FULL_CLIPS
    decode_frames: int = 32
    mtcnn_frames: int = 8
    e2e_frames: int = 32
    quick: bool = False


QUICK = BenchConfig(repeats=1, batches=(1, 2), xai_batch=2, naive_faces=2, paper=False,
                    peak_n=512, peak_tries=2, clips=QUICK_CLIPS, mtcnn_frames=2, e2e_frames=4,
                    quick=True)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` → (1, 8, 32); a clear error otherwise."""
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise ValueError(f"batches must be comma-separated sizes >= 1, e.g. 1,8,32,64; got "
                         f"{text!r}")
    return batches


def make_config(quick: bool = False, **given: object) -> BenchConfig:
    """The full or the quick preset with the options that were given (None: not given)."""
    base = QUICK if quick else BenchConfig()
    return replace(base, **{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]


@dataclass
class BenchReport:
    info: dict[str, str]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    csv: Path | None = None


def run_all(cfg: BenchConfig, say: Callable[[str], None] | None = None) -> BenchReport:
    """Every section in order; writes the CSV and returns the report."""
    say = say or (lambda msg: None)
    if cfg.repeats < 1 or not cfg.batches or min(cfg.batches) < 1:
        raise ValueError("repeats and every batch size must be >= 1")
    configure_threads(cfg.threads)
    device = resolve_device(cfg.device)
    settings = get_settings().model_copy(update={"torch_threads": cfg.threads,
                                                 "device": device.type})
    report = BenchReport(hardware(device))
    say(f"peak: fp32 matmul {cfg.peak_n}²")
    peak = matmul_peak(device, cfg.peak_n, cfg.peak_tries)
    report.figures.append(Figure("peak", f"fp32 matmul {cfg.peak_n}x{cfg.peak_n}, best of "
                                         f"{cfg.peak_tries}", "torch", None, peak, "GFLOP/s"))
    if device.type == "cpu":  # the peak is the better of torch's and ORT's matmul
        ort_peak = ort_matmul_peak(cfg.peak_n, cfg.peak_tries, cfg.threads)
        report.figures.append(Figure("peak", f"fp32 MatMul {cfg.peak_n}x{cfg.peak_n}, best of "
                                             f"{cfg.peak_tries}", "onnxruntime", None,
                                     ort_peak, "GFLOP/s"))
        peak = max(peak, ort_peak)
    sets = [bundled_set(settings, device, cfg.threads)]
    if cfg.paper:
        say("paper pair: placeholder store + ONNX export (cached)")
        sets.append(paper_set(cfg.cache_dir, settings, device, cfg.threads))
    else:
        report.notes.append("paper pair (Xception g, Detect-ResNet50 d) skipped: --no-paper "
                            "or --quick without --paper")
    for arch in sets:
        report.figures += _model_sections(arch, peak, cfg, say)
        if arch.onnx is None:
            report.notes.append(f"{arch.label} pair: ONNX Runtime skipped: {arch.onnx_skip}")
    say("decode: H.264 clips (encoded once into the cache)")
    report.figures += decode_figures(cfg.cache_dir, cfg.clips, cfg.decode_frames, cfg.repeats)
    report.figures += _pipeline_sections(settings, cfg, say)
    if cfg.service:
        say("service: dfshield serve under HTTP load (MAX_BATCH=1 and the default)")
        report.figures += service_figures(cfg.quick)
    report.csv = write_csv(csv_path(cfg.out_dir, report.info), report.info, report.figures,
                           report.notes)
    return report


def _model_sections(arch: ArchSet, peak: float, cfg: BenchConfig,
                    say: Callable[[str], None]) -> list[Figure]:
    methods = SEPARATE_METHODS + (("integrated_gradients",) if cfg.ig else ())
    say(f"forward: {arch.label} pair ({arch.g_arch}, {arch.d_arch}), batches {cfg.batches}")
    out = forward_figures(arch, peak, cfg.batches, cfg.repeats)
    say(f"xai: {arch.label} pair, batch {cfg.xai_batch}, {', '.join(methods)}")
    out += xai_figures(arch, methods, cfg.xai_batch, cfg.repeats)
    say(f"naive: {arch.label} pair, {cfg.naive_faces} faces one at a time vs batched")
    return out + naive_figures(arch, cfg.naive_faces, cfg.repeats)


def _pipeline_sections(settings: Settings, cfg: BenchConfig,
                       say: Callable[[str], None]) -> list[Figure]:
    """MTCNN and one video end to end with the service's models and settings."""
    analyzer = Analyzer.from_settings(settings)
    faces = FaceDetector.from_settings(settings, analyzer.device, analyzer.crop_size)
    say(f"faces: MTCNN on {cfg.mtcnn_frames} frames")
    out = mtcnn_figures(faces, cfg.mtcnn_frames, cfg.repeats)
    say("faces: MTCNN detection resolution grid vs a dense reference")
    out += face_res_figures(analyzer.device.type, cfg.mtcnn_frames, cfg.repeats)
    say(f"e2e: {cfg.e2e_frames}-frame video through the pipeline")
    return out + e2e_figures(settings, analyzer, faces, cfg.e2e_frames, cfg.repeats)


def bench_all(cfg: BenchConfig, console: Console | None = None) -> BenchReport:
    """Run, print the table and where the CSV went."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    report = run_all(cfg, lambda msg: err.log(msg))
    print_figures(report.figures, report.info, report.notes, console)
    console.print(f"CSV: {report.csv}")
    return report
