"""Evaluation tables in the paper's shapes (``dfshield train evaluate``) → report.md/.json + PNGs.

(a) g's precision per class, per frame (F2F) and per video (Vid), clean and under each attack;
(b) d's accuracy per attack x XAI method (fine-tuned / frozen) and the PGD-B ablation;
(c) ROC curves; (d) transfer to a second detector; (e) adaptive attacks (eq. 3 / eq. 4);
(f) time and peak memory per face; (g) the served pipeline end to end on the dataset's videos.
Every attacked crop is rounded to uint8 (what a video or PNG
carries, and what the service receives) and re-judged by g before it counts as attacked.
g's clean metrics use the whole split; all attacks hit the same random subset of its fakes
(``limit``; reals ``limit_real``), so rows compare.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.pipeline.explain import XAI_METHODS
from app.training.attack_batch import (
    MARGIN_SLACK,
    attack_budget,
)
from app.training.common import (
    CropFiles,
    ProgressFn,
    RunRecord,
    load_trained,
    loader,
    no_progress,
    pick_device,
    seed_everything,
    timed,
)
from app.training.data import read_index
from app.training.e2e import video_end_to_end
from app.training.eval_suite import (
    DModel,
    Suite,
    build_suite,
    compute_maps,
    load_d_models,
    p_attacked,
    primary_d,
    run_attacks,
    select_records,
)
from app.training.metrics import binary_metrics, safe_auc
from app.training.overhead import measure_overhead
from app.training.report import frame_video_precision, group_detection, write_report
from app.training.robust_eval import eval_jobs, robust_section
from app.training.robustness import robustness
from app.training.train_detector import predict_p_fake

log = logging.getLogger("dfshield.training")
EVAL_ATTACKS = ("pgd", "fgsm", "apgd", "nes", "square")
ADAPTIVE = ("adaptive_eq3", "adaptive_eq4")


def d_table(
    suite: Suite, ds: list[DModel], names: Sequence[str], batch_size: int, pgd_b: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Accuracy of each d on clean ∪ attacked(name), maps from ``suite.g`` (+ PGD-B)."""
    cells: dict[str, dict[str, Any]] = {d.key: {} for d in ds}
    rocs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {d.key: {} for d in ds}
    clean = suite.clean_x()
    for xai in sorted({d.xai for d in ds}):
        group = [d for d in ds if d.xai == xai]
        clean_maps = compute_maps(suite.g, xai, clean, batch_size)
        p_clean = {d.key: p_attacked(d, clean, clean_maps, batch_size) for d in group}
        for name in names:
            att = suite.attacked_x(name)
            att_maps = compute_maps(suite.g, xai, att, batch_size)
            y = np.r_[np.zeros(len(clean), int), np.ones(len(att), int)]
            for d in group:
                p = np.r_[p_clean[d.key], p_attacked(d, att, att_maps, batch_size)]
                cells[d.key][name] = _cell(y, p, d.tau)
                rocs[d.key][name] = (y, p)
                if pgd_b and name == "pgd":
                    zero = torch.zeros_like
                    pb = np.r_[p_attacked(d, clean, zero(clean_maps), batch_size),
                               p_attacked(d, att, zero(att_maps), batch_size)]
                    cells[d.key]["pgd_b"] = _cell(y, pb, d.tau)
    return cells, rocs


def _cell(y: np.ndarray, p: np.ndarray, tau: float) -> dict[str, Any]:
    """Accuracy at 0.5 (the paper's) and at tau; None when the attack never fooled g, since
    accuracy over clean crops alone says nothing about detecting that attack."""
    at_half, at_tau = binary_metrics(y, p, 0.5), binary_metrics(y, p, tau)
    usable = at_half["n_pos"] > 0
    return {"accuracy": at_half["accuracy"] if usable else None, "auc": at_half["auc"],
            "n_clean": at_half["n_neg"], "n_attacked": at_half["n_pos"], "tpr": at_half["tpr"],
            "tnr": at_half["tnr"], "accuracy_at_tau": at_tau["accuracy"] if usable else None,
            "tau": tau}


def clean_detector(
    g: nn.Module, tau: float, root: Path, recs: list[dict[str, Any]], batch_size: int,
    dev: torch.device,
) -> dict[str, Any]:
    """Table 1 on the FULL split (a forward pass each): precision per class, AUC per method,
    and the same crops re-encoded or softened (``robustness.py``)."""
    dl = loader(CropFiles(root, recs, g.input_size), batch_size)
    y, p = predict_p_fake(g, dl, dev, amp=False)
    out = frame_video_precision(recs, y, p, tau)
    out["auc"] = safe_auc(y, p)
    methods = np.array([r.get("method") or "fake" for r in recs])
    out["auc_by_method"] = {
        m: safe_auc(y[(y == 0) | (methods == m)], p[(y == 0) | (methods == m)])
        for m in sorted(set(methods[y == 1]))
    }
    out["roc"] = (y, p)
    out["robustness"] = robustness(g, tau, root, recs, batch_size, dev, stored=(y, p))
    return out


def detector_section(
    clean: dict[str, Any], suite: Suite, names: Sequence[str]
) -> dict[str, Any]:
    """Table 1 (clean, full split) and Table 2 (fake detection under attack, the subset)."""
    roc = clean.pop("roc")
    return {"clean": clean, "roc": roc, "attacked": {
        name: {**group_detection(suite.fakes.records, suite.p_after(name) >= suite.tau),
               "attack": suite.results[name].stats()}
        for name in names
    }}


def evaluate(
    data_root: Path,
    detector_run: Path,
    adversarial_runs: Sequence[Path] = (),
    out_dir: Path = Path("reports/latest"),
    attacks: Sequence[str] = EVAL_ATTACKS,
    attack_overrides: dict[str, dict[str, Any]] | None = None,
    adaptive: Sequence[str] = ADAPTIVE,
    transfer_detector_run: Path | None = None,
    limit: int | None = 200,
    limit_real: int | None = None,
    margin_slack: float = MARGIN_SLACK,
    split: str = "test",
    batch_size: int = 32,
    timing_batch: int = 8,
    timing_repeats: int = 5,
    video_frames: int = 16,
    seed: int = 0,
    device: str = "auto",
    notes: Sequence[str] = (),
    robust: bool = False,
    lofo_json: Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run every evaluation on ``split`` and write ``out_dir/report.{md,json}`` + ROC PNGs.

    ``robust``: also section (h), d against the attack × budget grid, benign corruptions and
    an independent library (``robust_eval.py``); ``lofo_json``: a ``train lofo`` result to
    include in it.
    """
    args = {k: v for k, v in locals().items() if k != "progress"}
    progress, overrides = progress or no_progress, attack_overrides or {}
    seed_everything(seed)
    dev = pick_device(device)
    data_root, out_dir = Path(data_root), Path(out_dir)
    record = RunRecord.start(out_dir, "evaluation", args, seed)
    g, g_rec = load_trained(Path(detector_run), dev)
    tau = float(g_rec.get("thresholds", {}).get("tau_fake", 0.5))
    ds = load_d_models(adversarial_runs, dev)
    recs = [r for r in read_index(data_root) if r["split"] == split]
    fakes = select_records([r for r in recs if int(r["label"]) == 1], limit, seed)
    reals = select_records([r for r in recs if int(r["label"]) == 0], limit_real or limit, seed + 1)
    report: dict[str, Any] = {"split": split, "device": str(dev), "notes": list(notes),
                              "margin_slack": margin_slack,
                              "budgets": {a: attack_budget(a, overrides.get(a, {}), tau,
                                                           margin_slack)
                                          for a in [*attacks, *adaptive]},
                              "models": {"detector": {"run": str(detector_run),
                                                      "arch": g.spec.name, "tau_fake": tau},
                                         "adversarial": [{"key": d.key, "run": d.run_dir,
                                                          "tau_attacked": d.tau} for d in ds]}}
    with timed(record, "attacks"):
        suite = build_suite(g, tau, data_root, fakes, reals, batch_size, margin_slack)
        run_attacks(suite, attacks, overrides, batch_size, seed, progress)
    report["detector"] = detector_section(
        clean_detector(g, tau, data_root, recs, batch_size, dev), suite, attacks)
    with timed(record, "adversarial"):
        report["adversarial"], report["adversarial_roc"] = d_table(
            suite, ds, attacks, batch_size, pgd_b="pgd" in attacks)
    with timed(record, "transfer"):
        report["transfer"] = _transfer(transfer_detector_run, ds, data_root, fakes, reals,
                                       attacks, overrides, batch_size, seed, dev, progress,
                                       margin_slack)
    with timed(record, "adaptive"):
        report["adaptive"] = _adaptive(suite, ds, adaptive, overrides, batch_size, seed,
                                       progress)
    if robust and (primary := primary_d(ds)) is not None:
        with timed(record, "robust"):
            report["robust"] = robust_section(suite, primary, eval_jobs(), batch_size, seed,
                                              progress)
    if lofo_json is not None:
        report["lofo"] = json.loads(Path(lofo_json).read_text(encoding="utf-8"))
    with timed(record, "videos"):
        report["videos"] = video_end_to_end(data_root, g, tau, primary_d(ds), dev,
                                            max_frames=video_frames, progress=progress)
    with timed(record, "overhead"):
        report["overhead"] = measure_overhead(
            g, primary.model if (primary := primary_d(ds)) else None, XAI_METHODS,
            timing_batch, timing_repeats, dev)
    written = write_report(out_dir, report)
    record.finish(metrics={"targets": written["targets"]}, files=written["files"])
    return written["json"]


def _transfer(
    run: Path | None, ds: list[DModel], root: Path, fakes: list, reals: list,
    attacks: Sequence[str], overrides: dict[str, dict[str, Any]], batch_size: int, seed: int,
    dev: torch.device, progress: ProgressFn, slack: float,
) -> dict[str, Any]:
    """Table 8: each d (trained on g1's PGD) on attacks optimised on g2, with g2's maps."""
    if run is None or not ds:
        why = "no second detector given" if run is None else "no adversarial detector"
        return {"status": "not run", "reason": why}
    g2, rec2 = load_trained(Path(run), dev)
    tau2 = float(rec2.get("thresholds", {}).get("tau_fake", 0.5))
    suite = build_suite(g2, tau2, root, fakes, reals, batch_size, slack)
    run_attacks(suite, attacks, overrides, batch_size, seed, progress)
    cells, _ = d_table(suite, ds, attacks, batch_size, pgd_b=False)
    return {"status": "ok", "target_detector": g2.spec.name, "run": str(run), "cells": cells,
            "target_test_auc": rec2.get("metrics", {}).get("test", {}).get("auc"),
            "fooled": {a: suite.results[a].stats() for a in attacks if a in suite.results},
            "maps_from": "target detector g2 (d deployed next to g2)"}


def _adaptive(
    suite: Suite, ds: list[DModel], names: Sequence[str],
    overrides: dict[str, dict[str, Any]], batch_size: int, seed: int, progress: ProgressFn,
) -> dict[str, Any]:
    """Tables 6-7: whole-system detection of fakes attacked with knowledge of d (eq. 3 / 4)."""
    primary = primary_d(ds)
    if not names or primary is None:
        return {"status": "not run", "reason": "no adversarial detector" if names else "skipped"}
    eps = attack_budget(names[0], overrides.get(names[0], {})).get("eps", 16 / 255)
    variants = {f"{n}/{base}": (n, kw) for n in names
                for base, kw in (("pgd", {}), ("fgsm", {"iters": 1, "step": eps}))}
    t0 = time.perf_counter()
    run_attacks(suite, [], overrides, batch_size, seed, progress, primary.model, variants)
    rows: dict[str, Any] = {}
    for label in variants:
        p_g = suite.p_after(label)
        called_real = np.flatnonzero(p_g < suite.tau)
        x = suite.after_x(label)[called_real]
        maps = compute_maps(suite.g, primary.xai, x, batch_size)
        flagged = p_attacked(primary, x, maps, batch_size) >= primary.tau
        # The system catches a fake if g calls it fake, or g calls it real and d flags it.
        caught = p_g >= suite.tau
        caught[called_real] = flagged
        rows[label] = {**group_detection(suite.fakes.records, caught),
                       "attack": suite.results[label].stats(),
                       "d_flags_real_called": float(flagged.mean()) if flagged.size else None}
    return {"status": "ok", "d": primary.key, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}

