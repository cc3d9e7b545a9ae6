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
    Verdict.UNCERTAIN: "blue",
}


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _badge(v: Verdict) -> str:
    return f"[{_STYLE[v]}]{v.value}[/]"


def _frame_row(f: FramePublic) -> list[str]:
    # A frame's headline scores are its worst judgeable face's (flagged faces do not judge).
    judged = [x for x in f.faces if not x.quality] or f.faces
    p_fake = max((x.p_fake for x in judged), default=None)
    p_att = max((x.p_attacked for x in judged if x.p_attacked is not None), default=None)
    flagged = sum(bool(x.quality) for x in f.faces)
    return [
        str(f.index),
        f"{f.timestamp:.2f}s",
        str(len(f.faces)) + (f" ({flagged} flagged)" if flagged else ""),
        ",".join(str(x.person) for x in f.faces if x.person is not None) or "-",
        _fmt(p_fake),
        _fmt(p_att),
        _badge(f.verdict),
    ]


def frames_table(result: AnalysisResult) -> Table:
    table = Table(title="per-frame verdicts", show_lines=False)
    for col in ("frame", "time", "faces", "persons", "p_fake", "p_attacked", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for f in result.frames:
        table.add_row(*_frame_row(f))
    return table


def persons_table(result: AnalysisResult) -> Table:
    table = Table(title="per-person verdicts (faces linked across frames)", show_lines=False)
    for col in ("person", "frames", "time", "p_fake mean", "max", "p_att max", "verdict"):
        table.add_column(col, justify="right" if col != "verdict" else "left", no_wrap=True)
    for p in result.persons:
        table.add_row(str(p.id), str(len(p.frames)), f"{p.start_s:.1f}-{p.end_s:.1f}s",
                      _fmt(p.mean_p_fake), _fmt(p.max_p_fake), _fmt(p.max_p_attacked),
                      _badge(p.verdict))
    return table


def print_result(console: Console, result: AnalysisResult) -> None:
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(frames_table(result))
    if result.persons:
        console.print(persons_table(result))
    s = result.summary
    th = result.thresholds
    console.print(
        f"[bold]verdict ({s.verdict_rule}): {_badge(s.verdict)}[/]  "
        f"frames fake/attacked/real/uncertain/no_face = {s.frames.fake}/{s.frames.attacked}/"
        f"{s.frames.real}/{s.frames.uncertain}/{s.frames.no_face}  "
        f"(tau_fake={th.tau_fake}, tau_attacked={th.tau_attacked}, xai={result.xai_method}, "
        f"device={result.device})"
    )
    names = ", ".join(f"{m.name}@{m.version}{'' if m.trained else ' (UNTRAINED)'}"
                      for m in result.models)
    console.print(f"models: {names}")
