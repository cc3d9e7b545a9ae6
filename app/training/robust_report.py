"""``dfshield train robust``: section (h) alone for one d, as ``reports/robust-d`` holds it.

The full ``train evaluate --robust`` also reruns the paper's tables, transfer, adaptive
attacks and videos (an hour more on 2 CPU cores); republishing d only needs (h): d against
the attack × budget grid, benign corruptions and torchattacks on held-out test identities,
plus a ``train lofo`` result when there is one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.training.common import (
    ProgressFn,
    atomic_write_text,
    jsonable,
    load_trained,
    no_progress,
    pick_device,
    seed_everything,
)
from app.training.data import read_index
from app.training.eval_suite import build_suite, load_d_models, select_records
from app.training.report import _pct, _table
from app.training.robust_eval import (
    EvalJob,
    eval_jobs,
    robust_markdown,
    robust_section,
    robust_targets,
)


def robust_report(
    data_root: Path,
    detector_run: Path,
    d_run: Path,
    out_dir: Path,
    limit_fake: int = 40,
    limit_real: int = 120,
    lofo_json: Path | None = None,
    jobs: Sequence[EvalJob] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/report.{md,json}``; returns the JSON report.

    ``jobs``: the attack × budget cells (default: the issue's grid, ``eval_jobs()``).
    """
    seed_everything(seed)
    dev = pick_device(device)
    t0 = time.perf_counter()
    g, g_rec = load_trained(Path(detector_run), dev)
    tau = float(g_rec.get("thresholds", {}).get("tau_fake", 0.5))
    d = load_d_models([Path(d_run)], dev)[0]
    recs = [r for r in read_index(Path(data_root)) if r["split"] == "test"]
    fakes = select_records([r for r in recs if int(r["label"]) == 1], limit_fake, seed)
    reals = select_records([r for r in recs if int(r["label"]) == 0], limit_real, seed + 1)
    suite = build_suite(g, tau, Path(data_root), fakes, reals, batch_size)
    sec = robust_section(suite, d, list(jobs or eval_jobs()), batch_size, seed,
                         progress or no_progress)
    sec["seconds"] = round(time.perf_counter() - t0, 1)
    sec["setup"] = {"g": str(detector_run), "tau_fake": tau, "d_run": str(d_run),
                    "test_fakes_selected": len(fakes), "caught_by_g": int(len(suite.caught)),
                    "test_reals": len(reals), "device": str(dev)}
    lofo = json.loads(Path(lofo_json).read_text(encoding="utf-8")) if lofo_json else None
    report = {"robust": sec, "lofo": lofo, "targets": robust_targets(sec, lofo)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(jsonable(report), indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", "\n".join(_markdown(report)) + "\n")
    return report


def _markdown(report: dict[str, Any]) -> list[str]:
    s = report["robust"]["setup"]
    head = [f"# d against attacks it was not trained on — {s['d_run']}", "",
            f"g = `{s['g']}` (tau_fake {s['tau_fake']:.3f}); held-out test identities: "
            f"{s['test_fakes_selected']} fakes selected, {s['caught_by_g']} caught by g and "
            f"attacked; {s['test_reals']} reals. {report['robust']['seconds']:.0f} s on "
            f"{s['device']}.", "", "## Targets", ""]
    rows = [[t["name"], _pct(t["value"]), _pct(t["target"]), "PASS" if t["pass"] else "MISS",
             t["detail"]] for t in report["targets"]]
    return [*head, *_table(["target", "value", "goal", "result", "detail"], rows), "",
            *robust_markdown(report["robust"], report["lofo"])]
