"""Figures of ``dfshield bench all``: one row each (section, name, backend, batch, value, unit,
target, met), a rich table, and a CSV under ``benchmarks/<hostname>-<YYYY-MM-DD>.csv`` whose
first rows (section ``hardware``) name the machine and library versions (timm-style: a benchmark
CSV is only worth committing with the hardware it ran on).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.table import Table

COLUMNS = ("section", "name", "backend", "batch", "value", "unit", "target", "met")
HARDWARE = "hardware"
NOTE = "note"
# (import name, distribution): the module's own __version__ first (torch's names its CUDA build,
# onnxruntime is installed as onnxruntime-gpu), the distribution's metadata otherwise.
_PACKAGES = (("torch", "torch"), ("onnxruntime", "onnxruntime-gpu"), ("timm", "timm"),
             ("captum", "captum"), ("av", "av"), ("facenet_pytorch", "facenet-pytorch"))


@dataclass(frozen=True)
class Target:
    """``op value``: the figure meets it when ``figure op value``."""

    op: Literal[">=", "<="]
    value: float

    def met(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Figure:
    section: str  # peak | forward | xai | naive | decode | faces | e2e | service
    name: str
    backend: str  # torch | onnxruntime <provider> | pyav | - ...
    batch: int | None  # faces per batch, sampled frames, ... (None: not batched)
    value: float
    unit: str
    target: Target | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)


def hardware(device: torch.device) -> dict[str, str]:
    """The machine and versions a figure depends on."""
    info = {"hostname": socket.gethostname(), "date": dt.date.today().isoformat(),
            "cpu_model": cpu_model(), "cores": str(os.cpu_count() or 0),
            "python": platform.python_version(), "torch_threads": str(torch.get_num_threads()),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for module, dist in _PACKAGES:
        info[dist] = _version(module, dist)
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str, dist: str) -> str:
    found = getattr(sys.modules.get(module), "__version__", None)
    if isinstance(found, str):
        return found
    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def csv_path(out_dir: Path, info: dict[str, str]) -> Path:
    return Path(out_dir) / f"{info['hostname']}-{info['date']}.csv"


def write_csv(path: Path, info: dict[str, str], figures: Sequence[Figure],
              notes: Sequence[str] = ()) -> Path:
    """Hardware rows, then note rows (skips and their reasons), then one row per figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for key, value in info.items():
            w.writerow([HARDWARE, key, "", "", value, "", "", ""])
        for note in notes:
            w.writerow([NOTE, note, "", "", "", "", "", ""])
        for f in figures:
            w.writerow(_csv_row(f))
    return path


def _csv_row(f: Figure, digits: int = 6) -> list[str]:
    met = "" if f.met is None else ("yes" if f.met else "no")
    return [f.section, f.name, f.backend, "" if f.batch is None else str(f.batch),
            f"{f.value:.{digits}g}", f.unit, "" if f.target is None else str(f.target), met]


def print_figures(figures: Sequence[Figure], info: dict[str, str], notes: Sequence[str] = (),
                  console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    where = info.get("gpu") or info["cpu_model"]
    table = Table(title=f"dfshield bench all on {info['device']} ({where}, {info['cores']} "
                        f"cores, {info['torch_threads']} torch threads)")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("batch", "value") else "left")
    for f in figures:
        row = _csv_row(f, digits=4)
        row[-1] = {"yes": "[green]met[/]", "no": "[red]missed[/]", "": ""}[row[-1]]
        table.add_row(*row)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
