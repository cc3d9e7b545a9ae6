"""``dfshield redteam``: whole-image attacks on g, uploaded to a running service over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.config import DeviceName, get_settings
from app.redteam import CONTROL, VARIANTS, Variant

if TYPE_CHECKING:
    from app.redteam.client import ServiceClient
    from app.redteam.report import RedteamReport
    from app.redteam.run import RedteamOptions

console = Console()
err_console = Console(stderr=True)
EXIT_BAD_INPUT = 2


def register(app: typer.Typer) -> None:
    app.command()(redteam)


def redteam(
    inputs: Annotated[list[Path], typer.Argument(help="image files or folders of images")],
    url: Annotated[str, typer.Option(help="base URL of the dfshield service under test")] =
        "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(
        envvar="DFSHIELD_API_KEY", help="API key with submit+read (env DFSHIELD_API_KEY)")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for the adversarial PNG and JPEG files")] =
        Path("redteam-out"),
    detector: Annotated[str | None, typer.Option(
        help="g to attack: a model-store name or a training run dir (default: the store's "
             "served default detector)")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    attack: Annotated[list[str] | None, typer.Option(
        help="pgd (exact crop) and/or eot (JPEG, ±10 % resize, shift); repeat for both")
    ] = None,
    eps: Annotated[float, typer.Option(min=0.5, max=255, help="L∞ budget in 8-bit levels")] = 16,
    iters: Annotated[int, typer.Option(min=1, help="PGD steps (1 level each) at most")] = 100,
    kappa: Annotated[float, typer.Option(
        min=0, help="logit margin to clear beyond the service's tau_fake")] = 2.0,
    eot_samples: Annotated[int, typer.Option(min=1, help="random views per face per step")] = 4,
    tau_fake: Annotated[float | None, typer.Option(
        min=0, max=1, help="the service's tau_fake (default: the detector's own)")] = None,
    device: Annotated[DeviceName, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="seed of the EOT views")] = 0,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait per analysis")] = 300,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report")] =
        None,
    control: Annotated[bool, typer.Option(
        help="also upload each unattacked image in the same formats, to tell the attack's "
             "effect from g's own misses")] = True,
) -> None:
    """Attack whole images so g calls their fake faces real, upload the results (PNG and
    JPEG-90) to the service and count how many fool g end to end and how many d catches."""
    from app.redteam.attack import AttackConfig
    from app.redteam.client import ServiceClient, check_base_url
    from app.redteam.geometry import Eot
    from app.redteam.run import RedteamOptions, collect_images

    try:
        check_base_url(url)
        variants = _variants(attack)
        paths = collect_images(inputs)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    if not paths:
        raise _fail("bad_input", "no image files among the inputs", EXIT_BAD_INPUT)
    cfg = AttackConfig(eps=eps / 255, iters=iters, kappa=kappa, seed=seed,
                       eot=Eot(samples=eot_samples))
    opts = RedteamOptions(out_dir=out, variants=variants, attack=cfg, tau_fake=tau_fake,
                          analysis_timeout_s=timeout, control=control)
    with ServiceClient(url, api_key) as client:
        report = _run(paths, opts, client, detector, models_dir, device)
    print_report(report.to_dict())
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"wrote {json_out}")


def _variants(given: list[str] | None) -> tuple[Variant, ...]:
    """--attack values, deduplicated in order; both variants when none is given."""
    wanted = list(dict.fromkeys(given or VARIANTS))
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown --attack {', '.join(unknown)}; use {' or '.join(VARIANTS)}")
    return tuple(wanted)  # type: ignore[arg-type]


def _run(paths: list[Path], opts: RedteamOptions, client: ServiceClient, detector: str | None,
         models_dir: Path | None, device: DeviceName) -> RedteamReport:
    """Load g and the face detector, then attack; model and HTTP problems exit 1."""
    import httpx

    from app.device import resolve_device
    from app.models.store import ModelStoreError
    from app.pipeline.faces import FaceDetector
    from app.redteam.client import ServiceError
    from app.redteam.run import Redteam, load_target

    settings = get_settings()
    try:
        dev = resolve_device(device)
        target = load_target(detector, models_dir or settings.models_dir, dev)
    except (ModelStoreError, RuntimeError, ValueError, FileNotFoundError) as exc:
        raise _fail("model_error", " ".join(str(exc).split()), 1) from None
    faces = FaceDetector.from_settings(settings, dev, int(target.g.input_size))
    try:
        with console.status("red-teaming") as status:
            team = Redteam(target, faces, client, opts, settings,
                           progress=lambda msg: status.update(msg))
            return team.run(paths)
    except (ServiceError, httpx.HTTPError) as exc:
        raise _fail("service_error", str(exc), 1) from None


def _fail(code: str, message: str, exit_code: int) -> typer.Exit:
    err_console.print(f"[red]error[/] [bold]{code}[/]: {message}", soft_wrap=True)
    return typer.Exit(exit_code)


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def print_report(report: dict) -> None:
    """One row per uploaded file (and per skipped image), then the totals."""
    table = Table(title=f"redteam against {report['config']['url']} "
                        f"(g {report['config']['detector']}, tau_fake "
                        f"{report['config']['tau_fake']:.3f})")
    for col in ("file", "attack", "L∞", "faces", "p_fake clean → local → service", "verdicts",
                "fooled", "caught"):
        table.add_column(col)
    for im in report["images"]:
        if im["status"] == "skipped":
            table.add_row(Path(im["source"]).name, "skipped", "", str(im["faces_found"]),
                          im["reason"] or "", "", "", "")
        linf = {v["variant"]: v["linf"] for v in im["variants"]} | {CONTROL: 0}
        for up in [*im["uploads"], *im["control"]]:
            table.add_row(*_upload_row(up, linf[up["variant"]]))
    console.print(table)
    t = report["totals"]
    console.print(
        f"{t['images']} image(s), {t['images_attacked']} attacked, {t['images_skipped']} "
        f"skipped; {t['uploads']} upload(s); {t['faces']} attacked face(s) judged: "
        f"[bold]{t['fooled']} fooled g end to end[/], of which {t['fooled_attacked']} "
        f"flagged attacked by d ({t['fooled_real']} passed as real); {t['fake']} still fake, "
        f"{t['uncertain']} uncertain, {t['lost']} lost", highlight=False, soft_wrap=True)
    c, b = t["control"], t["beyond_control"]
    if c["uploads"]:
        console.print(
            f"control (unattacked, same formats): {c['fooled']} of {c['faces']} face(s) not "
            f"called fake without any attack; of the attacked faces whose control was called "
            f"fake ({b['faces']}): {b['fooled']} fooled g, {b['fooled_attacked']} of those "
            "flagged attacked", highlight=False, soft_wrap=True)


def _upload_row(up: dict, linf: int) -> list[str]:
    faces = up["faces"]
    scores = "; ".join(f"{_fmt(f['p_fake_clean'])} → {_fmt(f['p_fake_local'])} → "
                       f"{_fmt(f['service_p_fake'])}" for f in faces)
    verdicts = ", ".join(f["outcome"] for f in faces) or (up["error"] or up["status"])
    return [Path(up["file"]).name, f"{up['variant']}/{up['format']}", f"{linf}/255",
            str(len(faces)),
            scores, verdicts, str(sum(f["outcome"] in ("real", "attacked") for f in faces)),
            str(sum(f["outcome"] == "attacked" for f in faces))]
