"""Metrics per frame / per video, issue targets, and rendering of the evaluation report.

``write_report`` turns the dict built by ``evaluate`` into ``report.json`` (numbers only),
``report.md`` (tables in the paper's shapes, targets with PASS/MISS and gap) and ROC PNGs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from app.training.common import atomic_write_text, jsonable, now_iso
from app.training.robust_eval import robust_markdown, robust_targets

XAI_COLUMNS = (("guided_backprop", "G-Backprop"), ("input_x_gradient", "Inp × Grad"),
               ("integrated_gradients", "Int-Grad"), ("saliency", "Saliency"))
GENERALISATION = ("fgsm", "apgd", "nes", "square")
TARGET_G_AUC, TARGET_PGD, TARGET_GEN, TARGET_PGDB_GAP = 0.95, 0.95, 0.80, 0.02
MIN_ATTACKED = 10  # fewer attacked crops than this and a cell says little about d


# ------------------------------------------------------------------------- metrics


def _precision(y: np.ndarray, pred: np.ndarray, cls: int) -> float | None:
    called = pred == cls
    return float((y[called] == cls).mean()) if called.any() else None


def _by_source(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[int]]:
    """Frames per video. Keyed by (source, label): pseudo-fakes made from a real source share
    its source id, and a video is either real or fake."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(str(r.get("source") or r.get("path")), int(r.get("label", 1)))].append(i)
    return groups


def frame_video_precision(
    records: Sequence[dict[str, Any]], y: np.ndarray, p: np.ndarray, tau: float
) -> dict[str, Any]:
    """Precision per class per frame (F2F) and per video (Vid: fake if > 50 % frames fake)."""
    pred = (p >= tau).astype(int)
    groups = _by_source(records)
    vy = np.array([round(float(y[idx].mean())) for idx in groups.values()], dtype=int)
    vp = np.array([int(pred[idx].mean() > 0.5) for idx in groups.values()], dtype=int)

    def block(yy: np.ndarray, pp: np.ndarray) -> dict[str, Any]:
        return {"precision_real": _precision(yy, pp, 0), "precision_fake": _precision(yy, pp, 1),
                "accuracy": float((yy == pp).mean()) if yy.size else None, "n": int(yy.size)}

    return {"f2f": block(y, pred), "vid": block(vy, vp), "tau": tau}


def group_detection(records: Sequence[dict[str, Any]], detected: np.ndarray) -> dict[str, Any]:
    """Share of fakes detected per frame, and per video by majority of its frames."""
    det = np.asarray(detected, dtype=bool)
    groups = _by_source(records)
    vids = [det[idx].mean() > 0.5 for idx in groups.values()]
    return {"f2f": float(det.mean()) if det.size else None,
            "vid": float(np.mean(vids)) if vids else None,
            "n_frames": int(det.size), "n_videos": len(vids)}


# ------------------------------------------------------------------------- targets


def _target(name: str, value: float | None, goal: float, detail: str) -> dict[str, Any]:
    ok = value is not None and value >= goal
    gap = None if value is None else value - goal
    return {"name": name, "value": value, "target": goal, "pass": ok, "gap": gap,
            "detail": detail}


def _thin_cells(row: dict[str, Any]) -> str:
    """Name the attacks that fooled g so rarely that their accuracy mostly measures the clean
    reals, with the mean over the others, so a reader can discount them."""
    thin = [a for a in GENERALISATION if 0 < row.get(a, {}).get("n_attacked", MIN_ATTACKED)
            < MIN_ATTACKED]
    if not thin:
        return ""
    rest = [row[a]["accuracy"] for a in GENERALISATION if a not in thin
            and row.get(a, {}).get("accuracy") is not None]
    names = ", ".join(f"{a} ({row[a]['n_attacked']} attacked)" for a in thin)
    return (f"; under {MIN_ATTACKED} attacked crops, accuracy ≈ clean accuracy: {names}"
            + (f"; mean without them {100 * float(np.mean(rest)):.2f}%" if rest else ""))


def compute_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    det = report["detector"]["clean"]
    sbi = {m: v for m, v in det.get("auc_by_method", {}).items()
           if "sbi" in m.lower() or "self" in m.lower()}
    g_auc, which = (next(iter(sbi.values())), f"self-blended ({next(iter(sbi))})") if sbi \
        else (det.get("auc"), "all fakes (no self-blended method in the index)")
    targets = [_target("g AUC on held-out identities", g_auc, TARGET_G_AUC,
                       f"split {report['split']}, {which}")]
    cells = report.get("adversarial", {})
    key = "saliency/finetune" if "saliency/finetune" in cells else next(
        (k for k in cells if k.startswith("saliency/")), None)
    row = cells.get(key, {}) if key else {}
    pgd = row.get("pgd", {}).get("accuracy")
    gen = [row[a]["accuracy"] for a in GENERALISATION
           if row.get(a, {}).get("accuracy") is not None]
    missing = [a for a in GENERALISATION if row.get(a, {}).get("accuracy") is None]
    targets.append(_target("d accuracy on PGD (Saliency)", pgd, TARGET_PGD, f"d = {key}"))
    targets.append(_target(
        "d mean accuracy FGSM/APGD/NES/Square (Saliency)", float(np.mean(gen)) if gen else None,
        TARGET_GEN, f"d = {key}" + (f"; no value (not run / never fooled g): "
                                    f"{', '.join(missing)}" if missing else "")
        + _thin_cells(row)))
    pgdb = row.get("pgd_b", {}).get("accuracy")
    drop = None if pgd is None or pgdb is None else pgd - pgdb
    targets.append(_target("PGD-B below PGD with maps (accuracy drop)", drop, TARGET_PGDB_GAP,
                           "maps replaced by zeros; 'measurably' = at least 2 points"))
    return targets + robust_targets(report.get("robust"), report.get("lofo"))


# ------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _roc_png(path: Path, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> bool:
    drawable = {k: v for k, v in curves.items() if len(np.unique(v[0])) == 2}
    if not drawable:
        return False
    # Figure without pyplot renders through Agg: no display and no global backend switch.
    fig = Figure(figsize=(4.5, 4.5), dpi=110)
    ax = fig.subplots()
    for label, (y, p) in drawable.items():
        fpr, tpr, _ = roc_curve(y, p)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return True


def _robustness_lines(rob: dict[str, Any] | None) -> list[str]:
    if not rob:
        return []
    rows = [[name, _num(v["auc"]), _pct(v["false_alarm"]), _pct(v["miss"]),
             _num(v["p_fake_real_median"], ".3f")] for name, v in rob["rows"].items()]
    return ["Robustness: the same crops, reals and fakes alike, re-encoded or softened "
            f"(down- then up-sampled); rates at tau_fake = {rob['tau']:.4f}:", "",
            *_table(["condition", "AUC", "false alarms (reals called fake)", "misses",
                     "median p_fake of reals"], rows)]


def _section_detector(rep: dict[str, Any]) -> list[str]:
    det, arch = rep["detector"], rep["models"]["detector"]["arch"]
    c = det["clean"]
    lines = ["## (a) Deepfake detector g (Tables 1–2 shape)", "",
             f"Clean {rep['split']} split, tau_fake = {c['tau']:.4f}, AUC = {_num(c['auc'])} "
             f"({c['f2f']['n']} frames, {c['vid']['n']} videos). Precision per class:", ""]
    lines += _table(["detector", "Real Vid", "Real F2F", "Fake Vid", "Fake F2F"], [[
        arch, _pct(c["vid"]["precision_real"]), _pct(c["f2f"]["precision_real"]),
        _pct(c["vid"]["precision_fake"]), _pct(c["f2f"]["precision_fake"])]])
    lines += ["AUC per fake method: " + ", ".join(
        f"{m} {_num(v)}" for m, v in c["auc_by_method"].items()), ""]
    lines += _robustness_lines(c.get("robustness"))
    lines += ["Under attack: share of the attacked fakes g still calls fake (the paper's "
              "'precision' on an all-fake set), after uint8 rounding:", ""]
    rows = [[a, _pct(v["vid"]), _pct(v["f2f"]), str(v["attack"]["n_attacked"]),
             _pct(v["attack"]["fools_g_float"]), _pct(v["attack"]["success_after_png"]),
             str(v["attack"]["lost_to_png"]), f"{255 * v['attack']['max_linf']:.1f}/255",
             _num(v["attack"]["mean_queries"], ".0f"),
             f"{v['attack']['seconds_per_crop']:.2f}"] for a, v in det["attacked"].items()]
    lines += _table(["attack", "Vid", "F2F", "attacked", "fools g (float)", "fools g (uint8)",
                     "lost to PNG", "max L∞", "mean queries", "s/crop"], rows)
    return lines + ["'attacked' = fakes g called fake before the attack (the rest count as "
                    "missed either way); 'lost to PNG' = fooled g as float, not once rounded.",
                    ""]


def _xai_grid(cells: dict[str, dict[str, Any]], mode: str, attacks: Sequence[str],
              with_b: bool) -> list[str]:
    names = (["pgd_b"] if with_b else []) + list(attacks)
    rows = []
    for name in names:
        label = "(PGD-B*)" if name == "pgd_b" else ("PGD*" if name == "pgd" else name.upper())
        row = [label]
        for xai, _ in XAI_COLUMNS:
            cell = cells.get(f"{xai}/{mode}", {}).get(name)
            txt = "not run" if cell is None else _pct(cell["accuracy"])
            row.append(f"({txt})" if name == "pgd_b" and cell else txt)
        rows.append(row)
    avg = ["**Average**"]
    for xai, _ in XAI_COLUMNS:
        vals = [cells.get(f"{xai}/{mode}", {}).get(a, {}).get("accuracy") for a in attacks]
        vals = [v for v in vals if v is not None]
        avg.append(_pct(float(np.mean(vals))) if vals else "not run")
    return _table(["attack", *(c for _, c in XAI_COLUMNS)], [*rows, avg])


def _section_adversarial(rep: dict[str, Any], attacks: Sequence[str]) -> list[str]:
    cells = rep.get("adversarial", {})
    lines = ["## (b) Adversarial detector d (Tables 3–4 shape)", "",
             "Accuracy at threshold 0.5 (as in the paper) on clean real crops g calls real ∪ "
             "attacked fakes that fool g. * = training attack; averages exclude PGD-B.", ""]
    for mode, title in (("finetune", "Fine-tuned (Table 3 shape)"),
                        ("frozen", "Frozen backbone, head only (Table 4 shape)")):
        lines += [f"### {title}", "", *_xai_grid(cells, mode, attacks, "pgd" in attacks)]
    detail = [[k, a, str(c["n_clean"]), str(c["n_attacked"]), _pct(c["accuracy"]),
               _pct(c["accuracy_at_tau"]), f"{c['tau']:.3f}",
               _num(c["auc"])]
              for k, row in cells.items() for a, c in row.items()]
    return lines + ["Per cell: counts, accuracy at 0.5 and at the published tau_attacked, AUC.",
                    "", *_table(["d", "attack", "clean", "attacked", "acc@0.5", "acc@tau",
                                 "tau", "AUC"], detail)]


def _section_transfer(rep: dict[str, Any], attacks: Sequence[str]) -> list[str]:
    tr = rep.get("transfer", {})
    lines = ["## (d) Transfer between detectors (Table 8 shape)", ""]
    if tr.get("status") != "ok":
        return lines + _table(["source → target", "status"], [
            [f"{rep['models']['detector']['arch']} → (second detector)",
             f"not run: {tr.get('reason', 'skipped')}"]])
    lines.append(f"d trained on {rep['models']['detector']['arch']} attacks, tested on attacks "
                 f"against {tr['target_detector']}; maps from {tr['maps_from']}. "
                 f"{tr['target_detector']}: test AUC {_num(tr.get('target_test_auc'))}.")
    fooled = tr.get("fooled", {})
    if fooled:
        lines += ["", *_table(["attack on target", "attacked", "fools it (uint8)"], [
            [a, str(f["n_attacked"]), _pct(f["success_after_png"])] for a, f in fooled.items()])]
    for mode in sorted({k.split("/")[1] for k in tr["cells"]}):
        lines += ["", f"Mode: {mode}", "", *_xai_grid(tr["cells"], mode, attacks, False)]
    return lines


def _section_adaptive(rep: dict[str, Any]) -> list[str]:
    ad = rep.get("adaptive", {})
    lines = ["## (e) Adaptive attacks (Tables 6–7 shape)", ""]
    if ad.get("status") != "ok":
        return lines + [f"not run: {ad.get('reason', 'skipped')}", ""]
    lines += [f"Share of attacked fakes the whole system catches (g says fake, or d flags a "
              f"real-called face), d = {ad['d']}; eq. 3 knows d, eq. 4 matches the map.", ""]
    rows = [[k, _pct(v["vid"]), _pct(v["f2f"]), _pct(v["attack"]["success_rate"]),
             _pct(v["attack"]["success_after_png"]), _pct(v["d_flags_real_called"])]
            for k, v in ad["rows"].items()]
    return lines + _table(["attack", "Vid", "F2F", "attack's own goal met", "fools g (uint8)",
                           "d flags real-called"], rows)


def _section_videos(rep: dict[str, Any]) -> list[str]:
    ve = rep.get("videos", {})
    lines = ["## (g) End to end on videos (the served pipeline)", ""]
    if ve.get("status") != "ok":
        return lines + [f"not run: {ve.get('reason', 'skipped')}", ""]
    acc, every = ve["accuracy"], ve["accuracy_all"]
    lines += [f"MTCNN → g → {ve['xai']} → d → verdicts, exactly as `dfshield analyze` runs them, "
              f"on {ve['max_frames']} frames per video; a fake counts as caught when called "
              f"fake or attacked. Held-out identities ({' + '.join(acc['splits'])}): "
              f"{_pct(acc['all'])} of {acc['n']} videos (real {_pct(acc['real'])}, fake "
              f"{_pct(acc['fake'])}); all videos: {_pct(every['all'])} of {every['n']}.", ""]
    rows = [[v["path"], v["split"], "fake" if v["label"] else "real", v["verdict"],
             " / ".join(str(v["frames"][k]) for k in ("real", "fake", "attacked", "no_face")),
             _num(v["p_fake_median"], ".3f"), "yes" if v["correct"] else "**no**"]
            for v in ve["videos"]]
    return lines + _table(["video", "split", "truth", "verdict", "frames real/fake/att/none",
                           "median p_fake", "correct"], rows) + [""]


def _section_overhead(rep: dict[str, Any]) -> list[str]:
    ov = rep["overhead"]
    lines = ["## (f) Computational overhead (Table 9 shape)", "",
             f"{ov['device_name']} ({ov['device']}, {ov['threads']} threads), batch "
             f"{ov['batch']}, input {ov['input_size']}, median of {ov['repeats']}; memory = "
             f"{ov['memory']}, 'rise' = peak minus what was held before the stage; "
             f"Integrated Gradients with {ov.get('ig_steps')} steps (the service's setting).", ""]
    rows = [[k, f"{v['ms_per_face']:.2f}", f"{v['overhead_pct']:+.0f}%",
             _num(v["peak_mb"], ".0f"), _num(v["rise_mb"], ".0f")]
            for k, v in ov["rows"].items()]
    return lines + _table(["stage", "ms / face", "vs g", "peak MB", "rise MB"], rows)


def write_report(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if _roc_png(out_dir / "roc_detector.png", "g: real vs fake (clean)",
                {"g": report["detector"]["roc"]}):
        files.append("roc_detector.png")
    for key, curves in report.pop("adversarial_roc", {}).items():
        name = f"roc_adversarial_{key.replace('/', '_')}.png"
        if _roc_png(out_dir / name, f"d ({key}): clean vs attacked", curves):
            files.append(name)
    report["detector"].pop("roc", None)
    report["targets"] = compute_targets(report)
    report["created"] = now_iso()
    attacks = list(report["detector"]["attacked"])
    md = [f"# dfshield evaluation — {out_dir.name}", "", f"Created {report['created']}; "
          f"split `{report['split']}`; device {report['device']}.", ""]
    md += ["## Targets", "", *_table(["target", "value", "goal", "result", "gap", "detail"], [
        [t["name"], _pct(t["value"]), _pct(t["target"]), "PASS" if t["pass"] else "MISS",
         "n/a" if t["gap"] is None else f"{100 * t['gap']:+.2f} pts", t["detail"]]
        for t in report["targets"]])]
    md += _section_detector(report) + _section_adversarial(report, attacks)
    md += ["## (c) ROC curves", "", *(f"![{f}]({f})" for f in files), ""]
    md += _section_transfer(report, attacks) + [""] + _section_adaptive(report)
    md += _section_overhead(report) + [""] + _section_videos(report)
    md += robust_markdown(report.get("robust"), report.get("lofo"))
    slack = report.get("margin_slack")
    md += ["## Attack budgets and notes", "", *(f"- {n}" for n in report.get("notes", [])),
           f"- success = g calls the uint8-rounded crop real (p_fake < tau_fake); attacks with "
           f"a margin parameter aim for Z_real − Z_fake > −logit(tau_fake) + {slack} (kappa).",
           *(f"- `{a}`: {json.dumps(jsonable(b))}" for a, b in report["budgets"].items()), ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    data = jsonable(report)
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    return {"json": data, "targets": report["targets"],
            "files": ["report.md", "report.json", *files]}
