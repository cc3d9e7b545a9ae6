"""What every ``dfshield`` sub-command shares: rich progress bars, one-line user errors and
the common options."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.config import REPO_ROOT

console = Console()
DEFAULT_MEDIA = REPO_ROOT / "tests" / "data"
SeedOpt = Annotated[int, typer.Option(help="random seed")]


def make_progress(out: Console = console, transient: bool = False) -> Progress:
    """The one bar layout of the CLI: description, bar, done/total, elapsed time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=out, transient=transient)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich bar; yields the ``progress(done, total)`` callback the training code takes."""
    with make_progress() as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def stage_progress(label: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """One rich bar per training stage; yields ``progress(stage, done, total)``."""
    with make_progress() as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{label}: {stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def user_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Bad input (a missing dataset, an empty split, a run dir of the wrong kind) ends the
    command with one line ``error: …`` and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from exc

    return run
