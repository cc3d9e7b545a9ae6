"""``dfshield protect IMAGE``, ``dfshield protect evaluate``, ``dfshield train generator`` and
``dfshield train denoiser``.

``protect`` is a group whose default command is the image one: ``dfshield protect photo.jpg
--out p.png`` runs ``protect image photo.jpg --out p.png``; ``evaluate`` is the only named
sub-command (a file literally called ``evaluate`` is spelt ``./evaluate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import typer
from rich.console import Console
from rich.progress import Progress
from typer.core import TyperGroup

from app.cli_common import make_progress
from app.config import get_settings

console = Console()
err_console = Console(stderr=True)
EXIT_BAD_INPUT = 2
ModeName = Literal["interrupt", "tsdf"]


class _DefaultImageGroup(TyperGroup):
    """Routes ``protect IMAGE ...`` to the ``image`` command when IMAGE names no sub-command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["image", *args]
        return super().parse_args(ctx, args)


protect_app = typer.Typer(cls=_DefaultImageGroup, no_args_is_help=True,
                          help="Active defence: protect a face photo before sharing it.")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    app.add_typer(protect_app, name="protect")
    train_app.command("generator")(train_generator_cmd)
    train_app.command("denoiser")(train_denoiser_cmd)


def _fail(code: str, message: str, exit_code: int) -> typer.Exit:
    err_console.print(f"[red]error[/] [bold]{code}[/]: {message}", soft_wrap=True)
    return typer.Exit(exit_code)


def _bar() -> Progress:
    return make_progress(err_console, transient=True)


def train_generator_cmd(
    data: Annotated[Path, typer.Argument(help="demo crop dataset (`dfshield train demo-data`)")],
    arch: Annotated[str, typer.Option(help="faceswap_ae64_w16 | faceswap_ae64_w12")] =
        "faceswap_ae64_w16",
    name: Annotated[str, typer.Option(help="manifest entry name")] = "dfshield-gen-faceswap-w16",
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    held_out: Annotated[bool, typer.Option(
        help="mark it as the transfer generator (evaluated, never optimised against)")] = False,
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    time_limit_s: Annotated[float, typer.Option(help="stop training after this long")] = 840.0,
) -> None:
    """Train a face-swap autoencoder on the corpus's train identities and publish it
    (role ``generator``)."""
    from app.protect.train_generator import (
        GeneratorTrainConfig,
        publish_generator,
        train_generator,
    )

    cfg = GeneratorTrainConfig(data, arch=arch, steps=steps, seed=seed,
                               time_limit_s=time_limit_s)
    try:
        with _bar() as bar:
            task = bar.add_task(f"training {arch}", total=steps)
            model, record = train_generator(cfg, lambda d, t: bar.update(task, completed=d))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    file = publish_generator(model, record, models_dir or get_settings().models_dir, name,
                             held_out)
    console.print_json(json.dumps({"published": name, "file": file, **_summary(record)}))


def train_denoiser_cmd(
    data: Annotated[Path, typer.Argument(help="demo crop dataset (`dfshield train demo-data`)")],
    name: Annotated[str, typer.Option(help="manifest entry name")] = "dfshield-purifier-dncnn",
    steps: Annotated[int, typer.Option(min=1)] = 2500,
    seed: Annotated[int, typer.Option()] = 0,
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    time_limit_s: Annotated[float, typer.Option(help="stop training after this long")] = 450.0,
) -> None:
    """Train the attacker's learned purifier (a small residual denoiser) on the corpus's real
    train faces with adversarial-looking noise and publish it (role ``purifier``)."""
    import shlex
    import sys

    from app.protect.train_denoiser import (
        DenoiserTrainConfig,
        publish_denoiser,
        train_denoiser,
    )

    cfg = DenoiserTrainConfig(data, steps=steps, seed=seed, time_limit_s=time_limit_s)
    try:
        with _bar() as bar:
            task = bar.add_task("training denoiser", total=steps)
            model, record = train_denoiser(cfg, lambda d, t: bar.update(task, completed=d))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    # Provenance: the exact command line that produced the published weights.
    command = "dfshield train denoiser " + shlex.join(sys.argv[sys.argv.index("denoiser") + 1:]
                                                      if "denoiser" in sys.argv else [])
    file = publish_denoiser(model, record, models_dir or get_settings().models_dir, name,
                            command)
    console.print_json(json.dumps({"published": name, "file": file,
                                   **{k: record[k] for k in ("steps_done", "seconds",
                                                             "final_loss", "held_out_psnr")}}))


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps_done", "seconds", "final_loss", "reconstruction_l1_train")
    return {k: record[k] for k in keys}


@protect_app.command("image")
def protect_image(
    image: Annotated[Path, typer.Argument(help="photo to protect (JPEG, PNG, WebP, BMP)")],
    out: Annotated[Path, typer.Option("--out", help="protected image (always lossless PNG)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    mode: Annotated[ModeName | None, typer.Option(help="interrupt | tsdf")] = None,
    eps: Annotated[float | None, typer.Option(help="L-inf budget on [0,1]")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="PGD steps per stage")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
) -> None:
    """Protect the faces of IMAGE and write OUT.png plus a report of what it was measured on."""
    from app.protect.service import (
        ProtectError,
        load_photo,
        options_from,
        protector_for,
        run_protect,
        write_png,
    )

    if out.suffix.lower() != ".png":
        raise _fail("bad_output", f"--out must end in .png (lossless), got {out.name!r}",
                    EXIT_BAD_INPUT)
    try:
        rgb = load_photo(image)
        opts = options_from(mode=mode, eps=eps, steps=steps)
        protector = protector_for(models_dir)
        with _bar() as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            result = run_protect(protector, rgb, opts, progress)
    except ProtectError as exc:
        raise _fail(exc.code, exc.message, exc.exit_code) from None
    write_png(out, result.protected)
    _print_report(result.report, out)
    if json_out is not None:
        json_out.write_text(result.report.model_dump_json(indent=2))
        console.print(f"wrote {json_out}")


def _print_report(report: Any, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{out} ({report.mode}, eps {report.eps:g}, L-inf written "
                        f"{report.linf * 255:.0f}/255, {report.seconds:.1f} s)")
    for col in ("face", "generator L2_mask (success)", "MTCNN after", "cascade after",
                "PSNR dB", "SSIM"):
        table.add_column(col)
    for i, f in enumerate(report.faces):
        gens = ", ".join(f"{g.l2_mask:.3f} ({'yes' if g.success else 'no'})"
                         for g in f.generators)
        table.add_row(str(i), gens, "found" if f.mtcnn_found_after else "missed",
                      "n/a" if not f.haar_found_before else
                      ("found" if f.haar_found_after else "missed"),
                      f"{f.psnr_db:.1f}", f"{f.ssim:.3f}")
    console.print(table)
    console.print(f"measured against: {', '.join(report.measured_against.generators)}; "
                  f"{report.measured_against.face_detector}", highlight=False)
    for c in report.caveats:
        console.print(f"[yellow]note[/]: {c}", highlight=False)


@protect_app.command("evaluate")
def evaluate_cmd(
    media: Annotated[list[Path], typer.Option(
        help="held-out photos: folders, files, or the face-api npm tarball (demo/ photos)")],
    out_dir: Annotated[Path, typer.Option(help="report.md + faces.csv go here")] =
        Path("reports/protect"),
    eps: Annotated[list[float] | None, typer.Option(help="budgets to evaluate (repeat)")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="interrupt | tsdf (repeat)")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 100,
    max_photos: Annotated[int, typer.Option(min=1)] = 20,
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    save_dir: Annotated[Path | None, typer.Option(
        help="keep the protected PNGs here (input of `protect persistence`)")] = None,
) -> None:
    """Figures of the issue on held-out photos → report.md (against the targets) + CSV."""
    from app.protect.eval_cli import run_evaluation

    try:
        text = run_evaluation(media, out_dir, tuple(eps or (0.025, 0.05)),
                              tuple(mode or ("interrupt", "tsdf")), steps, max_photos,
                              models_dir or get_settings().models_dir, _bar, save_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    console.print(text, markup=False, highlight=False)


@protect_app.command("merge")
def merge_cmd(
    runs: Annotated[list[Path], typer.Argument(help="out dirs of earlier evaluate runs")],
    out_dir: Annotated[Path, typer.Option()] = Path("reports/protect"),
) -> None:
    """Merge several `protect evaluate` runs (e.g. one per eps) into one report."""
    from app.protect.eval_cli import merge_runs

    try:
        text = merge_runs(runs, out_dir)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    console.print(text, markup=False, highlight=False)


@protect_app.command("persistence")
def persistence_cmd(
    media: Annotated[list[Path], typer.Option(help="the photos `protect evaluate` used")],
    protected_dir: Annotated[Path, typer.Option(help="its --save-dir")],
    data: Annotated[Path, typer.Option(help="demo corpus (swap identity's faces)")] =
        Path("runs/data"),
    eps: Annotated[float, typer.Option(help="which saved budget to attack")] = 0.05,
    steps: Annotated[int, typer.Option(min=1, help="attacker's fine-tuning steps K")] = 100,
    max_photos: Annotated[int, typer.Option(min=1)] = 20,
    out_dir: Annotated[Path, typer.Option()] = Path("reports/protect"),
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
) -> None:
    """The attacker retrains on protected photos: none vs interruption vs TSDF, per cropper."""
    from app.protect.persistence_cli import run_persistence

    try:
        text = run_persistence(media, protected_dir, eps, steps, max_photos,
                               models_dir or get_settings().models_dir, data, out_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail("bad_input", str(exc), EXIT_BAD_INPUT) from None
    console.print(text, markup=False, highlight=False)
