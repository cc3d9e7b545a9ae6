"""Terminal rendering of results (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from app.schemas import AnalysisResult, FramePublic, Verdict

_STYLE = {
    Verdict.FAKE: "bold red",
    Verdict.ATTACKED: "bold magenta",
    Verdict.REAL: "green",
    Verdict.NO_FACE: "dim",
}


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _frame_row(f: FramePublic) -> list[str]:
    # A frame's headline scores are its worst face's: the face that decided its verdict.
    p_fake = max((x.p_fake for x in f.faces), default=None)
    p_att = max((x.p_attacked for x in f.faces if x.p_attacked is not None), default=None)
    v = f.verdict
    return [
        str(f.index),
        f"{f.timestamp:.2f}s",
        str(len(f.faces)),
        _fmt(p_fake),
        _fmt(p_att),
        f"[{_STYLE[v]}]{v.value}[/]",
    ]


def frames_table(result: AnalysisResult) -> Table:
    table = Table(title="per-frame verdicts", show_lines=False)
    for col in ("frame", "time", "faces", "p_fake", "p_attacked", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for f in result.frames:
        table.add_row(*_frame_row(f))
    return table


def print_result(console: Console, result: AnalysisResult) -> None:
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(frames_table(result))
    s = result.summary
    th = result.thresholds
    console.print(
        f"[bold]verdict: [{_STYLE[s.verdict]}]{s.verdict.value}[/][/]  "
        f"frames fake/attacked/real/no_face = {s.frames.fake}/{s.frames.attacked}/"
        f"{s.frames.real}/{s.frames.no_face}  "
        f"(tau_fake={th.tau_fake}, tau_attacked={th.tau_attacked}, xai={result.xai_method}, "
        f"device={result.device})"
    )
    names = ", ".join(f"{m.name}@{m.version}{'' if m.trained else ' (UNTRAINED)'}"
                      for m in result.models)
    console.print(f"models: {names}")
