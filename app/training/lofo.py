"""Leave-one-family-out (``dfshield train lofo``): the honest measure of "unseen attack".

For each attack family in a mixed attack set, d is retrained with that family's attacked rows
removed from train and val (``train_adversarial(exclude_families=...)``), and its detection
rate is read on that family's *test* rows at the retrained d's own tau_attacked. The full d
(every family in training) is the reference column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.training.attack_mix import family_of
from app.training.attack_set import INDEX_NAME, read_jsonl
from app.training.common import ProgressFn, RunRecord, atomic_write_text, no_progress
from app.training.robust_eval import _lofo_lines
from app.training.train_adversarial import train_adversarial

LOFO_NAME = "lofo.json"


def families_in(attack_root: Path) -> list[str]:
    """Attack families with attacked rows in the set (label 1), sorted."""
    rows = read_jsonl(Path(attack_root) / INDEX_NAME)
    return sorted({family_of(str(r["attack"])) for r in rows if int(r["label"]) == 1})


def family_rate(by_attack: dict[str, dict[str, Any]], family: str) -> tuple[int, float | None]:
    """Pooled (n, flagged share) over every attack label of ``family``."""
    parts = [(v["n"], v["flagged"]) for k, v in by_attack.items()
             if k != "clean" and k != "benign" and family_of(k) == family]
    n = sum(p[0] for p in parts)
    return n, (sum(a * b for a, b in parts) / n if n else None)


def lofo(
    attack_root: Path,
    detector: Path,
    out_dir: Path,
    families: Sequence[str] | None = None,
    full_run: Path | None = None,
    progress: ProgressFn | None = None,
    **d_kwargs: Any,
) -> dict[str, Any]:
    """Retrain d once per family (and once with all, unless ``full_run`` is given)."""
    out_dir, progress = Path(out_dir), progress or no_progress
    record = RunRecord.start(out_dir, "lofo", {
        "attack_root": attack_root, "detector": detector, "families": families,
        "full_run": full_run, **d_kwargs}, int(d_kwargs.get("seed", 0)))
    fams = list(families or families_in(attack_root))
    if not fams:
        raise ValueError(f"{attack_root} holds no attacked rows")
    full = full_run or out_dir / "all"
    store: dict[Any, Any] = {}  # one g, one XAI method: every retrained d reuses the maps
    if full_run is None:
        train_adversarial(attack_root, full, detector, progress=progress, map_store=store,
                          **d_kwargs)
    full_by = _test_by_attack(full)
    rows = []
    for fam in fams:
        run = out_dir / f"without_{fam}"
        rec = train_adversarial(attack_root, run, detector, exclude_families=[fam],
                                progress=progress, map_store=store, **d_kwargs)
        n, rate = family_rate(rec["metrics"].get("test_by_attack", {}), fam)
        rows.append({"family": fam, "n": n, "flagged": rate,
                     "flagged_full": family_rate(full_by, fam)[1],
                     "tau_attacked": rec["thresholds"]["tau_attacked"], "run": str(run)})
    result = {"attack_root": str(attack_root), "detector": str(detector),
              "full_run": str(full), "d_kwargs": d_kwargs, "rows": rows}
    atomic_write_text(out_dir / LOFO_NAME, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "lofo.md", "\n".join(["# Leave-one-family-out", "",
                                                      *_lofo_lines(result)]))
    record.finish(metrics={"rows": rows})
    return result


def _test_by_attack(run: Path) -> dict[str, dict[str, Any]]:
    rec = json.loads((Path(run) / "record.json").read_text(encoding="utf-8"))
    return rec.get("metrics", {}).get("test_by_attack", {})
