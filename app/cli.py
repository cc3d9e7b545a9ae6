"""The ``dfshield`` command line: analyze | models | serve | api | worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.config import DeviceName, XaiMethod, get_settings

app = typer.Typer(help="dfshield: deepfake and adversarial-attack detection.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect the served model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2


def _fail(code: str, message: str, exit_code: int) -> typer.Exit:
    err_console.print(f"[red]error[/] [bold]{code}[/]: {message}")
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
    from app.media import MediaLimits
    from app.media.errors import MediaError
    from app.models.store import ModelStoreError
    from app.pipeline.analyze import Analyzer
    from app.pipeline.faces import FaceDetector
    from app.pipeline.run import analyze_path

    settings = get_settings()
    if threads is not None:
        settings = settings.model_copy(update={"torch_threads": threads})
    if not path.is_file():
        raise _fail("not_found", f"no such file: {path}", EXIT_BAD_INPUT)
    try:
        analyzer = Analyzer.from_settings(settings, device)
    except (ModelStoreError, RuntimeError) as exc:
        raise _fail("model_error", str(exc), 1) from None
    faces = FaceDetector.from_settings(settings, analyzer.device, analyzer.crop_size)
    try:
        with _progress() as bar:
            task = bar.add_task("analysing", total=None)
            result = analyze_path(
                path, analyzer, faces, MediaLimits.from_settings(settings), max_frames, xai,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except MediaError as exc:
        raise _fail(exc.code, exc.message, EXIT_BAD_INPUT) from None
    from app.render import print_result

    print_result(console, result)
    if json_out:
        json_out.write_text(result.model_dump_json(indent=2))
        console.print(f"wrote {json_out}")


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


@models_app.command("list")
def models_list(
    models_dir: Annotated[Path | None, typer.Option(help="model store folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the models in the manifest, verifying each file's sha256."""
    from rich.table import Table

    from app.models.store import ModelStoreError, load_manifest, sha256_file

    folder = models_dir or get_settings().models_dir
    try:
        manifest = load_manifest(folder)
    except ModelStoreError as exc:
        raise _fail("model_error", str(exc), 1) from None
    rows = []
    for m in manifest.models:
        f = folder / m.file
        ok = f.is_file() and sha256_file(f) == m.sha256
        rows.append({"name": m.name, "role": m.role, "architecture": m.architecture,
                     "version": m.version, "trained": m.trained, "file": m.file,
                     "sha256_ok": ok, "default": manifest.default.get(m.role) == m.name})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"models in {folder}")
    for col in ("name", "role", "architecture", "version", "trained", "default", "sha256_ok"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("name", "role", "architecture", "version",
                                            "trained", "default", "sha256_ok")))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
