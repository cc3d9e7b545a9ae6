"""Glue of ``dfshield protect evaluate``: load photos and models, run, write the report."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import Progress

from app.protect.eval_report import to_markdown
from app.protect.evaluate import EvalConfig, evaluate, summarise, write_csv
from app.protect.protector import Protector
from app.protect.service import options_from
from app.protect.settings import get_protect_settings


def load_photos(sources: Sequence[Path], limit: int) -> list[tuple[str, np.ndarray]]:
    from app.training.realworld import load_images

    photos: list[tuple[str, np.ndarray]] = []
    for src in sources:
        if src.is_file() and src.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
            bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{src}: not a readable image")
            photos.append((src.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        else:
            photos += load_images(src)
    return photos[:limit]


def time_1280x720(protector: Protector, rgb: np.ndarray) -> dict[str, Any]:
    """``protect`` with default settings on the photo resized to 1280x720."""
    photo = cv2.resize(rgb, (1280, 720), interpolation=cv2.INTER_AREA)
    t0 = time.monotonic()
    result = protector.protect(photo, options_from())
    return {"seconds": time.monotonic() - t0, "faces": len(result.report.faces),
            "mode": result.report.mode}


def run_evaluation(media: Sequence[Path], out_dir: Path, eps: tuple[float, ...],
                   modes: tuple[str, ...], steps: int, max_photos: int, models_dir: Path,
                   bar: Callable[[], Progress], save_dir: Path | None = None) -> str:
    from app.pipeline.faces import FaceDetector
    from app.protect.generators import load_generators

    bad = [m for m in modes if m not in ("interrupt", "tsdf")]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; use interrupt and/or tsdf")
    photos = load_photos(media, max_photos)
    bundled, held_out = load_generators(models_dir), load_generators(models_dir, held_out=True)
    protector = Protector(bundled, FaceDetector(device="cpu", max_faces=5, crop_size=64))
    ps = get_protect_settings()
    cfg = EvalConfig(modes=modes, eps=eps, steps=steps, poison_steps=steps,
                     save_dir=save_dir, feature_weight=ps.feature_weight)
    with bar() as b:
        task = b.add_task("evaluating", total=None)
        rows = evaluate(protector, held_out, photos, cfg,
                        lambda d, t: b.update(task, completed=d, total=t))
    write_csv(out_dir / "faces.csv", rows)
    summary = summarise(rows)
    write_csv(out_dir / "summary.csv", [_flat(s) for s in summary])
    meta = {"photos": len(photos), "faces": len(rows) // max(len(summary), 1),
            "source": ", ".join(p.name for p in media), "steps": steps, "poison_steps": steps,
            "bundled": ", ".join(g.name for g in bundled),
            "heldout": ", ".join(g.name for g in held_out)}
    timing = time_1280x720(protector, photos[0][1])
    (out_dir / "run.json").write_text(json.dumps({"meta": meta, "timing": timing}, indent=2))
    text = to_markdown(summary, meta, timing)
    (out_dir / "report.md").write_text(text)
    return text


def merge_runs(run_dirs: Sequence[Path], out_dir: Path) -> str:
    """One report from several evaluate runs (e.g. one per eps, each inside the 15-minute
    budget of a job on the shared CPU): their faces.csv rows and run.json side by side."""
    rows, runs = [], []
    for d in run_dirs:
        with (d / "faces.csv").open() as fh:
            rows += [{k: _typed(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        runs.append(json.loads((d / "run.json").read_text()))
    write_csv(out_dir / "faces.csv", rows)
    summary = summarise(rows)
    write_csv(out_dir / "summary.csv", [_flat(s) for s in summary])
    timings = [r["timing"] for r in runs]
    timing = max(timings, key=lambda t: t["seconds"])  # judged on the slowest run
    timing = {**timing, "all": [round(t["seconds"], 1) for t in timings]}
    text = to_markdown(summary, runs[0]["meta"], timing)
    (out_dir / "report.md").write_text(text)
    return text


def _typed(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    try:
        return float(v)
    except ValueError:
        return v


def _flat(s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in s.items():
        if isinstance(v, tuple):
            out[k], out[f"{k}_lo"], out[f"{k}_hi"] = (round(x, 4) for x in v)
        else:
            out[k] = round(v, 4) if isinstance(v, float) else v
    return out
