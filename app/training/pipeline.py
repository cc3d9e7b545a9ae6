"""``dfshield train all``: data → g → PGD attack set → d (per XAI x mode) → evaluate → publish.

Presets:
- ``demo``: the offline demo corpus (self-blended / cross-blended fakes of redistributable
  faces) at 128 px, the small CPU models (resnet10t_df, detect_resnet10t; regnetx002_df as
  the transfer target), Saliency d
  fine-tuned and frozen, evaluation at the paper's attack budgets on a subset of the test
  crops (written in the report). Sized for < 90 minutes on 2 CPU cores.
- ``full``: the paper's settings on a user dataset (FF++ layout or real/ + fake/ folders, or an
  already prepared crop dataset): Xception (g) with EfficientNetB4ST as the transfer detector,
  Detect-ResNet50 for all four XAI methods x both modes, full attack budgets; needs a GPU.

Every stage writes its own run dir under ``out_dir``; a stage whose record says ``done`` is
skipped on re-run (``resume``), and interrupted training stages resume from ``last.pt``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import REPO_ROOT
from app.training.attack_mix import DEFAULT_MIX, EPS_GRID
from app.training.attack_set import attack_set
from app.training.common import (
    RECORD_NAME,
    ProgressFn,
    RunRecord,
    atomic_write_text,
    no_progress,
    pick_device,
)
from app.training.data import read_meta
from app.training.evaluate import evaluate
from app.training.lofo import LOFO_NAME, families_in, lofo
from app.training.publish import publish
from app.training.train_adversarial import train_adversarial
from app.training.train_detector import train_detector

log = logging.getLogger("dfshield.training")

# The demo's g recipe, shared by its transfer target. Clean pairs first: blends are learnt
# fast (with the mask head) before JPEG and blur, applied to both halves of a pair after the
# blend, make g keep them through re-encoding. Without that second phase g lost most of its
# AUC to one JPEG pass (0.69 at q75 on held-out crops).
DEMO_G_RECIPE: dict[str, Any] = {
    "epochs": 35, "batch_size": 32, "lr": 2e-3, "patience": 10, "online_sbi": True,
    "mask_weight": 1.0, "warmup_epochs": 5, "warmup_augment": {"p_jpeg": 0.0, "p_blur": 0.0},
    "augment": True}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        # Measured on 2 CPU cores (2026-12): corpus ~10 s, g ~25 s/epoch (early stop at 20),
        # PGD set ~30 s, d ~3 min fine-tuned + ~1.5 min frozen, evaluate ~4 min + transfer.
        "data": {"crop_size": 128, "per_identity": 16, "lfw_people": 100, "pexels_frames": 32,
                 "n_videos": 6, "video_frames": 24},
        "detector": {"arch": "resnet10t_df", **DEMO_G_RECIPE},
        # Another family (RegNet, grouped convs) for Table 8; ~16 s/epoch.
        "transfer_detector": {"arch": "regnetx002_df", **DEMO_G_RECIPE},
        # d's attacked class from every family over the ε grid, its clean class with one
        # benign-corrupted copy per real (attack_mix.py, benign.py): PGD alone taught d one
        # optimiser's fingerprint (random-start PGD passed it 80–90 % of the time).
        "attack": {"attack": "pgd", "train_attacks": list(DEFAULT_MIX),
                   "eps_grid": list(EPS_GRID), "benign": 1, "upload_copies": 0, "batch_size": 32,
                   "limit": 600, "limit_real": 600},
        "adversarial": {"arch": "detect_resnet10t", "xai": ["saliency"],
                        "modes": ["finetune", "frozen"], "epochs": 10, "batch_size": 32,
                        "lr": 1e-3, "patience": 4, "tau_far": 0.03},
        "lofo": {"epochs": 6, "batch_size": 32, "lr": 1e-3, "patience": 3, "tau_far": 0.03},
        "evaluate": {"limit": 60, "limit_real": 120, "batch_size": 32, "timing_repeats": 5,
                     "attack_overrides": {}, "robust": True},
        "notes": [
            "demo preset: fakes are self-blended / cross-blended real faces (no deepfake "
            "dataset offline); models are trained from scratch (no ImageNet weights).",
            "g trains on the real crops only, each paired with a fresh self-blend per epoch "
            "(online SBI) and a training-only blend-mask head; 5 clean epochs, then JPEG and "
            "blur on both halves of each pair; validation and test use the corpus' stored "
            "fakes.",
            "attacks at the paper's budgets, on a random subset of 60 test fakes (those g "
            "calls fake are attacked) and 120 test reals.",
            "only Saliency d is trained in the demo: other XAI columns read 'not run'. The "
            "transfer target (d) is regnetx002_df, trained with g's recipe.",
            "d's attacked class mixes every attack family over eps 2/4/8/16 (DDN over L2 1/2/4), "
            "its clean class holds one benign-corrupted copy of each real; tau_attacked allows "
            "3 % false alarms on the val clean class. Section (h) tests d per family and "
            "budget, on benign corruptions, on torchattacks and leave-one-family-out.",
        ],
    },
    "full": {
        "data": {"crop_size": 299, "frames_per_video": 32},
        "detector": {"arch": "xception", "epochs": 20, "batch_size": 32, "lr": 2e-4,
                     "patience": 4, "workers": 4},
        "transfer_detector": {"arch": "efficientnet_b4_st", "epochs": 20, "batch_size": 32,
                              "lr": 2e-4, "patience": 4, "workers": 4},
        "attack": {"attack": "pgd", "batch_size": 64, "limit": None, "limit_real": None},
        "adversarial": {"arch": "detect_resnet50", "xai": ["saliency", "guided_backprop",
                                                          "input_x_gradient",
                                                          "integrated_gradients"],
                        "modes": ["finetune", "frozen"], "epochs": 10, "batch_size": 16,
                        "lr": 1e-3, "patience": 3, "workers": 4},
        "lofo": None,
        "evaluate": {"limit": 1000, "limit_real": 1000, "batch_size": 64, "timing_repeats": 20,
                     "attack_overrides": {}, "robust": True},
        "notes": ["full preset: the paper's attack budgets (eps 16/255)."],
    },
}


def preset_config(preset: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    for stage, values in (overrides or {}).items():
        if stage not in cfg or not isinstance(cfg[stage], dict):
            raise ValueError(f"cannot override {stage!r}; stages: {', '.join(cfg)}")
        cfg[stage].update(values)
    return cfg


LINEAGE_NAME = "lineage.json"


def _stamp(path: Path) -> str | None:
    """When the run (or crop dataset) at ``path`` was finished: its identity as an input."""
    if (path / RECORD_NAME).is_file():
        return RunRecord.load(path).get("finished")
    return read_meta(path).get("created")


def _same_lineage(stage_dir: Path, lineage: dict[str, str | None]) -> bool:
    path = stage_dir / LINEAGE_NAME
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")) == lineage


def _stage(name: str, stage_dir: Path, resume: bool, inputs: list[Path], fn: Any, /,
           **kwargs: Any) -> Any:
    """Run one stage unless ``resume`` and it is done *from the inputs there now*.

    ``lineage.json`` (written before the stage runs) names each input and when it finished.
    A stage left by another run (a reused report folder) or older than a retrained input is
    redone from scratch: its own checkpoints are not resumed either.
    """
    lineage = {str(p): _stamp(p) for p in inputs}
    same = resume and _same_lineage(stage_dir, lineage)
    if same and (stage_dir / RECORD_NAME).is_file() and \
            RunRecord.load(stage_dir).get("status") == "done":
        log.info("stage %s: already done in %s, skipped", name, stage_dir)
        return RunRecord.load(stage_dir).data
    if "resume" in kwargs:
        kwargs["resume"] = same
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / LINEAGE_NAME, json.dumps(lineage, indent=2) + "\n")
    t0 = time.perf_counter()
    out = fn(**kwargs)
    log.info("stage %s: %.1f s", name, time.perf_counter() - t0)
    return out


def prepare_data(
    preset: str, cfg: dict[str, Any], out_dir: Path, data_root: Path | None,
    source: Path | None, media_dir: Path | None, seed: int, progress: ProgressFn,
    device: str = "cpu",
) -> Path:
    """An existing crop dataset, else one prepared from ``source``, else the demo corpus."""
    if data_root is not None:
        return Path(data_root)
    root = out_dir / "data"
    if read_meta(root).get("complete"):  # an interrupted build is redone from scratch
        return root
    d = cfg["data"]

    def tick(done: int, total: int) -> None:
        progress("data", done, total)

    if source is not None:
        from app.training.data import prepare

        prepare(Path(source), root, frames_per_video=d.get("frames_per_video", 32),
                crop_size=d["crop_size"], seed=seed, progress=tick, device=device)
        return root
    from app.training.demo import build_demo

    media = Path(media_dir) if media_dir else REPO_ROOT / "tests" / "data"
    build_demo(root, media, seed=seed, crop_size=d["crop_size"],
               per_identity=d["per_identity"], lfw_people=d["lfw_people"],
               pexels_frames=d["pexels_frames"], n_videos=d["n_videos"],
               video_frames=d["video_frames"], overwrite=True, progress=tick)
    return root


def train_all(
    preset: str = "demo",
    out_dir: Path | None = None,
    models_dir: Path = Path("models"),
    data_root: Path | None = None,
    source: Path | None = None,
    media_dir: Path | None = None,
    report_dir: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    do_publish: bool = True,
    set_default: bool = True,
    resume: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Every stage in order; returns a summary (run dirs, report targets, published names)."""
    progress = progress or no_progress
    cfg = preset_config(preset, overrides)
    if preset != "demo" and data_root is None and source is None:
        raise ValueError(f"the {preset} preset needs data_root (a crop dataset) or source "
                         "(an FF++ tree or real/ + fake/ folders); only demo builds its own")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir) if out_dir else Path("runs") / stamp
    report_dir = Path(report_dir) if report_dir else Path("reports") / out_dir.name
    record = RunRecord.start(out_dir, "pipeline", {
        "preset": preset, "models_dir": models_dir, "data_root": data_root, "source": source,
        "media_dir": media_dir, "report_dir": report_dir, "device": device,
        "publish": do_publish, "config": cfg}, seed)
    t0 = time.perf_counter()
    root = prepare_data(preset, cfg, out_dir, data_root, source, media_dir, seed, progress,
                        pick_device(device).type)
    record.add_timing("data", time.perf_counter() - t0)
    common = {"seed": seed, "device": device, "progress": progress}
    g_dir = out_dir / "detector"
    _timed(record, "detector", lambda: _stage(
        "detector", g_dir, resume, [root], train_detector, data_root=root, run_dir=g_dir,
        resume=resume, **cfg["detector"], **common))
    g2_dir = None
    if cfg["transfer_detector"]:
        g2_dir = out_dir / "detector_transfer"
        _timed(record, "detector_transfer", lambda: _stage(
            "detector_transfer", g2_dir, resume, [root], train_detector, data_root=root,
            run_dir=g2_dir, resume=resume, **cfg["transfer_detector"], **common))
    att_dir = out_dir / "attacks" / ("mix" if cfg["attack"].get("train_attacks")
                                     else cfg["attack"]["attack"])
    _timed(record, "attack", lambda: _stage(
        "attack", att_dir, resume, [root, g_dir], attack_set, data_root=root, detector=g_dir,
        out=att_dir,
        **cfg["attack"], **common))
    d_dirs = _train_ds(cfg["adversarial"], out_dir, att_dir, g_dir, resume, common, record)
    lofo_json = _lofo_stage(cfg.get("lofo"), out_dir, att_dir, g_dir, d_dirs, resume, common,
                            record)
    ev = {**cfg["evaluate"], "lofo_json": lofo_json}
    _timed(record, "evaluate", lambda: _stage(
        "evaluate", report_dir, resume, [root, g_dir, *d_dirs, *([g2_dir] if g2_dir else [])],
        evaluate, data_root=root, detector_run=g_dir,
        adversarial_runs=d_dirs, out_dir=report_dir, transfer_detector_run=g2_dir,
        notes=cfg["notes"], **ev, **common))
    published = None
    if do_publish:
        primary = next((d for d in d_dirs if d.name == "saliency-finetune"), d_dirs[0])
        t1 = time.perf_counter()
        published = publish(g_dir, primary, models_dir, set_default=set_default,
                            report=report_dir / "report.json")
        record.add_timing("publish", time.perf_counter() - t1)
    summary = {"out_dir": str(out_dir), "data_root": str(root), "detector_run": str(g_dir),
               "attack_set": str(att_dir), "adversarial_runs": [str(d) for d in d_dirs],
               "report": str(report_dir / "report.md"),
               "targets": RunRecord.load(report_dir).get("metrics", {}).get("targets"),
               "published": None if published is None else {
                   k: published[k]["name"] for k in ("detector", "adversarial")}}
    record.finish(summary=summary, total_s=round(time.perf_counter() - t0, 1))
    return summary


def _train_ds(
    cfg: dict[str, Any], out_dir: Path, att_dir: Path, g_dir: Path, resume: bool,
    common: dict[str, Any], record: RunRecord,
) -> list[Path]:
    stage_kw = {k: v for k, v in cfg.items() if k not in ("xai", "modes")}
    d_dirs = []
    for xai in cfg["xai"]:
        for mode in cfg["modes"]:
            run = out_dir / "adversarial" / f"{xai}-{mode}"
            _timed(record, f"adversarial {xai}-{mode}", lambda run=run, xai=xai, mode=mode:
                   _stage(f"adversarial {xai}-{mode}", run, resume, [att_dir, g_dir],
                          train_adversarial,
                          attack_root=att_dir, run_dir=run, detector=g_dir, xai=xai,
                          mode=mode, resume=resume, **stage_kw, **common))
            d_dirs.append(run)
    return d_dirs


def _lofo_stage(
    cfg: dict[str, Any] | None, out_dir: Path, att_dir: Path, g_dir: Path, d_dirs: list[Path],
    resume: bool, common: dict[str, Any], record: RunRecord,
) -> Path | None:
    """Leave-one-family-out on a mixed attack set (skipped for a single-attack set)."""
    if not cfg or not d_dirs or len(families_in(att_dir)) < 2:
        return None
    lofo_dir = out_dir / "lofo"
    full = next((d for d in d_dirs if d.name.endswith("-finetune")), d_dirs[0])
    _timed(record, "lofo", lambda: _stage(
        "lofo", lofo_dir, resume, [att_dir, g_dir], lofo, attack_root=att_dir,
        detector=g_dir, out_dir=lofo_dir, full_run=full, **cfg, **common))
    return lofo_dir / LOFO_NAME


def _timed(record: RunRecord, name: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    out = fn()
    record.add_timing(name, time.perf_counter() - t0)
    return out
