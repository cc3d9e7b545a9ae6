"""The ``dfshield`` command line: analyze | models | train | serve | api | worker | bench |
redteam."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from app.cli_common import make_progress
from app.cli_redteam import register as register_redteam_command
from app.cli_service import register as register_service_commands
from app.cli_train import train_app
from app.config import DeviceName, XaiMethod, get_settings
from app.protect.cli import register as register_protect_commands

app = typer.Typer(help="dfshield: deepfake and adversarial-attack detection.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect the served model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
register_service_commands(app)
register_redteam_command(app)
register_protect_commands(app, train_app)
console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2


def _fail(code: str, message: str, exit_code: int) -> typer.Exit:
    # One unwrapped line, so scripts can grep the code.
    err_console.print(f"[red]error[/] [bold]{code}[/]: {message}", soft_wrap=True)
    return typer.Exit(exit_code)


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="video or image file")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full result")] = None,
    xai: Annotated[XaiMethod | None, typer.Option(help="XAI method for d")] = None,
    max_frames: Annotated[int | None, typer.Option(min=1, help="frames sampled")] = None,
    device: Annotated[DeviceName | None, typer.Option(help="auto | cpu | cuda")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="torch CPU threads")] = None,
) -> None:
    """Analyse one file in-process and print per-frame verdicts."""
    from app.media import MediaLimits, open_media
    from app.media.errors import MediaError
    from app.models.store import ModelStoreError
    from app.pipeline.analyze import Analyzer
    from app.pipeline.faces import FaceDetector
    from app.pipeline.run import analyze_source

    settings = get_settings()
    if threads is not None:
        settings = settings.model_copy(update={"torch_threads": threads})
    if not path.is_file():
        raise _fail("not_found", f"no such file: {path}", EXIT_BAD_INPUT)
    try:  # validate the input before paying for model loading
        source = open_media(path, MediaLimits.from_settings(settings), max_frames)
    except MediaError as exc:
        raise _fail(exc.code, exc.message, EXIT_BAD_INPUT) from None
    try:
        analyzer = Analyzer.from_settings(settings, device)
    except (ModelStoreError, RuntimeError) as exc:
        raise _fail("model_error", str(exc), 1) from None
    faces = FaceDetector.from_settings(settings, analyzer.device, analyzer.crop_size)
    try:
        with make_progress(err_console, transient=True) as bar:
            task = bar.add_task("analysing", total=None)
            result = analyze_source(
                source, analyzer, faces, xai,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except MediaError as exc:
        raise _fail(exc.code, exc.message, EXIT_BAD_INPUT) from None
    from app.render import print_result

    print_result(console, result)
    if json_out:
        json_out.write_text(result.model_dump_json(indent=2))
        console.print(f"wrote {json_out}")


@models_app.command("list")
def models_list(
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the models in the manifest, verifying each file's sha256."""
    from rich.table import Table

    from app.models.store import ModelStoreError, list_entries

    folder = models_dir or get_settings().models_dir
    try:
        rows = [
            {"name": r.entry.name, "role": r.entry.role, "architecture": r.entry.architecture,
             "version": r.entry.version, "trained": r.entry.trained, "default": r.is_default,
             "onnx": r.entry.onnx is not None, "grad_graph": r.entry.onnx_grad is not None,
             "sha256_ok": bool(r.sha_ok)}
            for r in list_entries(folder, verify=True)
        ]
    except ModelStoreError as exc:
        raise _fail("model_error", str(exc), 1) from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models in {folder}")
    for col in rows[0] if rows else ["name"]:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)


ImportFormatName = Literal["ffpp-xception", "icpr-effb4st"]


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="the published checkpoint file")],
    fmt: Annotated[ImportFormatName, typer.Option("--format", help="source layout")],
    name: Annotated[str, typer.Option(help="manifest entry name for the imported g")],
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    trust_pickle: Annotated[bool, typer.Option(
        help="allow reading a pickled whole model (ffpp-xception) with the restricted "
             "unpickler")] = False,
    set_default: Annotated[bool, typer.Option(help="make it the served default g")] = False,
    replace: Annotated[bool, typer.Option(help="overwrite an entry of the same name")] = False,
    onnx: Annotated[bool, typer.Option(
        help="also export ONNX (parity-checked) for DFSHIELD_BACKEND=onnx")] = False,
    parity_image: Annotated[list[Path] | None, typer.Option(
        help="image(s) whose largest face the parity check uses (default: bundled portraits)")
    ] = None,
) -> None:
    """Import a paper's published detector into the model store, with a parity check."""
    from app.models.importers import CheckpointImportError, import_checkpoint
    from app.models.store import ModelStoreError

    folder = models_dir or get_settings().models_dir
    try:
        report = import_checkpoint(fmt, path, name, folder, trust_pickle=trust_pickle,
                                   set_default=set_default, replace=replace, onnx=onnx,
                                   images=parity_image or None)
    except CheckpointImportError as exc:
        raise _fail(exc.code, exc.message, EXIT_BAD_INPUT) from None
    except ModelStoreError as exc:
        raise _fail("model_error", " ".join(str(exc).split()), 1) from None
    e = report.entry
    console.print(f"parity: max |Δlogit| = {report.parity:.2e} on {report.crops} face crops "
                  f"(tolerance {e.metrics['import_parity']['tolerance']:g})", highlight=False,
                  soft_wrap=True)
    console.print(f"imported {e.name} ({e.architecture}, version {e.version}, tau_fake "
                  f"{e.threshold}) into {folder}; default detector: "
                  f"{'this one' if report.is_default else 'unchanged'}", highlight=False,
                  soft_wrap=True)
    if report.note:
        err_console.print(f"[yellow]note[/]: {report.note}", highlight=False, soft_wrap=True)


@models_app.command("export-grad")
def models_export_grad(
    name: Annotated[str, typer.Argument(help="a detector listed in the manifest")],
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
) -> None:
    """Export a detector's logits + input-gradient graph (Saliency in ONNX Runtime), check it
    against captum, and list it in the manifest (served with DFSHIELD_BACKEND=onnx)."""
    import tempfile

    from app.models.publishing import attach_onnx_grad
    from app.models.store import ModelStoreError, load_manifest, load_model
    from app.training.export import DEFAULT_OPSET, OnnxParityError
    from app.training.export_grad import GradGraphUnsupported, export_grad_onnx

    folder = models_dir or get_settings().models_dir
    try:
        listed = load_manifest(folder).get(name)
        if listed.role != "detector":
            raise ModelStoreError(f"model {name!r} is a {listed.role}; only detectors get a "
                                  "grad graph")
        model = load_model(folder, listed)
        with tempfile.TemporaryDirectory() as tmp:
            info = export_grad_onnx(model, Path(tmp) / "grad.onnx", DEFAULT_OPSET)
            entry = attach_onnx_grad(folder, name, Path(info["file"]), DEFAULT_OPSET)
    except (KeyError, ModelStoreError) as exc:
        raise _fail("model_error", " ".join(str(exc).strip("'\"").split()), 1) from None
    except (GradGraphUnsupported, OnnxParityError) as exc:
        raise _fail("grad_graph_rejected", " ".join(str(exc).split()), 1) from None
    p = info["parity"]
    console.print(f"parity: max |Δlogit| {p['logits_max_abs_diff']:.2e}; "
                  f"{p['grad_share_within_rtol_of_captum']:.4%} of gradient pixels within "
                  f"{p['grad_rtol']:g} of captum; median rel. error vs float64 "
                  f"{p['graph_vs_float64']['median_rel']:.2e} (captum "
                  f"{p['captum_vs_float64']['median_rel']:.2e})", highlight=False, soft_wrap=True)
    console.print(f"{entry.name}: gradient graph {entry.onnx_grad.file if entry.onnx_grad else ''}"
                  f" listed in {folder}", highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
