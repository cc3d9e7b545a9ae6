"""``dfshield train …``: the offline training entrypoint (separate from serving)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.config import REPO_ROOT

train_app = typer.Typer(help="Offline training: data, detector, attacks, d, evaluation, publish.",
                        no_args_is_help=True)
console = Console()
DEFAULT_MEDIA = REPO_ROOT / "tests" / "data"


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich bar; yields the ``progress(done, total)`` callback the training code takes."""
    cols = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_summary(summary: dict[str, Any]) -> None:
    console.print_json(json.dumps(summary, default=str))


@train_app.command()
def prepare(
    source: Annotated[Path, typer.Argument(help="FF++ root, or a folder with real/ + fake/")],
    out: Annotated[Path, typer.Argument(help="crop dataset folder to write (resumable)")],
    layout: Annotated[Literal["auto", "ffpp", "folders"], typer.Option()] = "auto",
    frames_per_video: Annotated[int, typer.Option(min=1)] = 16,
    crop_size: Annotated[int, typer.Option(min=32)] = 224,
    compression: Annotated[str, typer.Option(help="FF++ compression folder")] = "c23",
    methods: Annotated[list[str] | None, typer.Option(help="FF++ methods (repeat)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="MTCNN device")] = "cpu",
    self_blends: Annotated[int, typer.Option(min=0, help="SBI fakes per real crop")] = 0,
) -> None:
    """Extract MTCNN 1.3x face crops into a crop dataset split by identity."""
    from app.training.data import add_self_blends
    from app.training.data import prepare as run_prepare

    with progress_bar("sources") as cb:
        summary = run_prepare(source, out, layout=layout, frames_per_video=frames_per_video,
                              seed=seed, crop_size=crop_size, compression=compression,
                              methods=methods, progress=cb, device=device)
    if self_blends:
        with progress_bar("self-blends") as cb:
            summary["self_blends"] = add_self_blends(out, per_real=self_blends, seed=seed,
                                                     progress=cb)
    _print_summary(summary)


@train_app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="demo corpus folder")] = Path("runs/demo-data"),
    media_dir: Annotated[Path, typer.Option(help="real media to draw faces from")] = DEFAULT_MEDIA,
    crop_size: Annotated[int, typer.Option(min=32)] = 224,
    per_identity: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option()] = False,
) -> None:
    """Build the offline demo corpus: bundled real faces + self-blended / cross-identity fakes."""
    from app.training.demo import build_demo

    with progress_bar("demo corpus") as cb:
        summary = build_demo(out, media_dir, seed=seed, crop_size=crop_size,
                             per_identity=per_identity, overwrite=overwrite, progress=cb)
    _print_summary(summary)
