"""Train the deepfake detector g on a crop dataset (``dfshield train detector``).

Class balance by a weighted sampler; augmentations (colour jitter, blur, JPEG re-compression,
flip) act on the [0,1] crop tensor; validation AUC + accuracy on the full val split every epoch;
best checkpoint by val AUC; early stopping; tau_fake chosen on val (Youden J) goes in the record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.config import REPO_ROOT
from app.models.backbone import init_from_backbone
from app.models.registry import create_model
from app.training.camera import degraded_set
from app.training.common import (
    BEST_NAME,
    LAST_NAME,
    CropFiles,
    ProgressFn,
    RunRecord,
    autocast,
    balanced_sampler,
    load_checkpoint,
    loader,
    make_scaler,
    no_progress,
    optimizer_step,
    pick_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    to_tensor,
    to_uint8,
)
from app.training.crop_augment import Augment, JpegAt
from app.training.data import read_index, read_meta
from app.training.mask_head import MaskHead
from app.training.metrics import binary_metrics, choose_threshold, safe_auc, threshold_for_fpr
from app.training.online_sbi import SelfBlendPairs, flatten_pairs

log = logging.getLogger("dfshield.training")


def _augmenter(augment: bool | dict[str, Any], flip: bool = True) -> Augment | None:
    """``True``: default augmentation; a dict: Augment's probabilities/ranges; ``False``: none.
    ``flip=False``: no flip (online SBI pairs flip themselves, masks included)."""
    if not augment:
        return None
    kw = dict(augment) if isinstance(augment, dict) else {}
    return Augment(**(kw if flip else {**kw, "p_flip": 0.0}))


def calibration_crops(root: Path, recs: list[dict[str, Any]], size: int, n: int = 256,
                      seed: int = 0) -> torch.Tensor:
    """``n`` real training crops (a fixed random draw) in [0,1]: what a pretrained trunk's
    BatchNorm statistics are measured on (``backbone.unfold_affine``)."""
    reals = [r for r in recs if r["label"] == 0] or recs
    pick = np.random.default_rng(seed).permutation(len(reals))[:n]
    ds = CropFiles(root, [reals[int(i)] for i in pick], size)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def split_records(root: Path, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    if not (Path(root) / "index.jsonl").is_file():
        raise FileNotFoundError(f"{root} is not a crop dataset (no index.jsonl): make one with "
                                "`dfshield train prepare` or `dfshield train demo-data`")
    recs = [r for r in read_index(root) if r["split"] == split]
    if not recs:
        raise ValueError(f"split {split!r} of {root} has no crops; check index.jsonl")
    return recs[:limit] if limit else recs


@torch.no_grad()
def predict_p_fake(
    model: nn.Module, dl: torch.utils.data.DataLoader, device: torch.device, amp: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p_fake) over a loader, in eval mode."""
    model.eval()
    labels, probs = [], []
    for x, y, _ in dl:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        probs.append(logits.float().softmax(1)[:, 1].cpu())
        labels.append(y)
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()


def _train_epoch(
    model: nn.Module,
    dl: torch.utils.data.DataLoader,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    max_steps: int | None,
    progress: ProgressFn,
    stage: str,
    mask_head: MaskHead | None = None,
    mask_weight: float = 0.0,
    grad_clip: float | None = None,
) -> float:
    """One epoch; with ``mask_head`` (online SBI batches carry blend masks) its loss, times
    ``mask_weight``, joins the classification loss."""
    model.train()
    total, n = 0.0, 0
    steps = len(dl) if max_steps is None else min(len(dl), max_steps)
    for step, (x, y, *extra) in enumerate(dl):
        if step >= steps:
            break
        x, y = flatten_pairs(x, y)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
            if mask_head is not None and len(extra) > 1:
                loss = loss + mask_weight * mask_head.loss(extra[1].flatten(0, 1))
        optimizer_step(loss, opt, scaler, grad_clip)
        total, n = total + float(loss.detach()) * len(y), n + len(y)
        progress(stage, step + 1, steps)
    return total / max(n, 1)


def train_detector(
    data_root: Path,
    run_dir: Path,
    arch: str = "resnet10t_df",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    patience: int = 3,
    max_steps_per_epoch: int | None = None,
    limit_train: int | None = None,
    augment: bool | dict[str, Any] = True,
    workers: int = 0,
    online_sbi: bool = False,
    blend_scale: tuple[float, float] = (1.0, 1.0),
    p_soften: float = 0.0,
    warmup_epochs: int = 0,
    warmup_augment: bool | dict[str, Any] = False,
    val_jpeg: int | None = None,
    mask_weight: float = 0.0,
    backbone: str | None = None,
    models_dir: Path = REPO_ROOT / "models",
    grad_clip: float | None = None,
    tau_fpr: float | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train g; returns the run record (also written to ``run_dir/record.json``).

    ``online_sbi``: train on the real crops only, each paired with a fresh self-blended fake
    (``online_sbi.py``); validation and test still use the dataset's stored fakes.
    ``warmup_epochs``: a curriculum, the first epochs with ``warmup_augment`` and no softening
    (blend cues are learnt on clean pairs first, then kept through compression and blur); the
    best epoch is chosen among the later ones, and early stopping only counts those.
    ``val_jpeg``: also score the val crops re-encoded at this JPEG quality; the best epoch
    is then the one with the best mean of the clean and the re-encoded AUC.
    ``mask_weight`` > 0 (online SBI only): also learn where the blend is (``mask_head.py``).
    ``tau_fpr``: choose tau_fake for at most this false-fake rate on degraded val reals.
    ``backbone``: start from this pretrained backbone of ``models_dir`` (e.g. the dlib face
    ResNet for ``faceresnet_df``) instead of random weights.
    """
    args = {k: v for k, v in locals().items() if k != "progress"}
    progress = progress or no_progress
    data_root, run_dir = Path(data_root), Path(run_dir)
    seed_everything(seed)
    dev = pick_device(device)
    model = create_model(arch)
    size = model.input_size
    train_recs = split_records(data_root, "train", limit_train)
    val_recs = split_records(data_root, "val")
    init = None
    if backbone:
        calib = model.prep(calibration_crops(data_root, train_recs, size))
        init = init_from_backbone(model.net, models_dir, backbone, calib)
    model = model.to(dev)

    def train_loader_for(warm: bool) -> torch.utils.data.DataLoader:
        return _train_loader(data_root, train_recs, size, warmup_augment if warm else augment,
                             online_sbi, batch_size, workers, seed, tuple(blend_scale),
                             0.0 if warm else p_soften)

    val_dl = loader(CropFiles(data_root, val_recs, size), batch_size, workers)
    val_jpeg_dl = None if val_jpeg is None else loader(
        CropFiles(data_root, val_recs, size, JpegAt(val_jpeg)), batch_size, workers)
    mask_head = MaskHead(model.net).to(dev) if online_sbi and mask_weight > 0 else None
    params = [*model.net.parameters(), *(mask_head.parameters() if mask_head else [])]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    scaler = make_scaler(dev, amp)
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad": 0, "history": []}
    if resume and (run_dir / LAST_NAME).is_file():
        state = _restore(run_dir / LAST_NAME, model, opt, sched, scaler, mask_head)
        log.info("resuming %s at epoch %d", run_dir, state["epoch"])
    record = RunRecord.start(run_dir, "detector", args, seed)
    record.update(arch=arch, arch_kwargs={}, input_size=size, device=str(dev),
                  backbone_init={"backbone": backbone, **init} if init else "random",
                  data=_data_info(data_root, train_recs, val_recs))
    t_start = time.perf_counter()
    phase, train_dl = None, None
    for epoch in range(state["epoch"], epochs):
        if state["bad"] >= patience:
            break
        if phase != (epoch < warmup_epochs):
            phase = epoch < warmup_epochs
            train_dl = train_loader_for(phase)
        t0 = time.perf_counter()
        loss = _train_epoch(model, train_dl, opt, scaler, dev, amp, max_steps_per_epoch,
                            progress, f"detector epoch {epoch + 1}/{epochs}", mask_head,
                            mask_weight, grad_clip)
        sched.step()
        y, p = predict_p_fake(model, val_dl, dev, amp)
        auc = safe_auc(y, p)
        acc = float(((p >= 0.5) == y).mean())
        score = auc if auc is not None else acc
        row = {"epoch": epoch + 1, "train_loss": loss, "val_auc": auc, "val_acc": acc}
        if val_jpeg_dl is not None:
            auc_jpeg = safe_auc(*predict_p_fake(model, val_jpeg_dl, dev, amp))
            row["val_auc_jpeg"] = auc_jpeg
            score = (score + (auc_jpeg if auc_jpeg is not None else score)) / 2
        row.update(score=score, lr=sched.get_last_lr()[0],
                   seconds=round(time.perf_counter() - t0, 2))
        state["history"].append(row)
        log.info("detector %s", row)
        # Warm-up epochs never win: a clean-phase g scores well on the stored fakes yet is
        # exactly what the second phase exists to improve on.
        eligible = epoch >= warmup_epochs or warmup_epochs >= epochs
        if eligible and score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad=0)
            save_checkpoint(run_dir / BEST_NAME, {"model": model.net.state_dict(),
                                                  "epoch": epoch + 1, "val_auc": auc})
        elif eligible:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        _save_last(run_dir / LAST_NAME, model, opt, sched, scaler, state, mask_head)
        record.update(history=state["history"])
    record.add_timing("train", time.perf_counter() - t_start)
    if mask_head is not None:
        mask_head.remove()
    return _finish(record, model, run_dir, data_root, val_dl, dev, amp, batch_size, workers,
                   state, tau_fpr)


def _train_loader(
    root: Path, recs: list[dict[str, Any]], size: int, augment: bool | dict[str, Any],
    online_sbi: bool, batch_size: int, workers: int, seed: int,
    blend_scale: tuple[float, float] = (1.0, 1.0), p_soften: float = 0.0,
) -> torch.utils.data.DataLoader:
    """Stored crops with a class-balanced sampler, or reals + online self-blends in pairs
    (half the batch size in pairs, so a step still sees ``batch_size`` images)."""
    if not online_sbi:
        return loader(CropFiles(root, recs, size, _augmenter(augment)), batch_size, workers,
                      balanced_sampler([r["label"] for r in recs], seed),
                      drop_last=len(recs) > batch_size)
    flip = aug.p_flip if (aug := _augmenter(augment)) else 0.0
    pairs = SelfBlendPairs(root, recs, size, _augmenter(augment, flip=False), blend_scale,
                           p_soften, flip)
    per_step = max(1, batch_size // 2)
    sampler = torch.utils.data.RandomSampler(pairs, generator=torch.Generator().manual_seed(seed))
    return loader(pairs, per_step, workers, sampler, drop_last=len(pairs) > per_step)


def _finish(
    record: RunRecord,
    model: nn.Module,
    run_dir: Path,
    data_root: Path,
    val_dl: torch.utils.data.DataLoader,
    dev: torch.device,
    amp: bool,
    batch_size: int,
    workers: int,
    state: dict[str, Any],
    tau_fpr: float | None = None,
) -> dict[str, Any]:
    """Reload the best epoch, pick tau_fake on val, measure val (and test, if any).

    ``tau_fpr``: tau_fake is the lowest threshold at which at most this share of the val
    reals, clean and under every camera-like degradation (``camera.py``), is called fake;
    otherwise Youden's J on the stored val split."""
    model.net.load_state_dict(load_checkpoint(run_dir / BEST_NAME, dev)["model"])
    y, p = predict_p_fake(model, val_dl, dev, amp)
    metrics: dict[str, Any] = {}
    if tau_fpr is None:
        tau, rule = choose_threshold(y, p), "youden_j_val"
    else:
        p_deg = _degraded_val_p(model, val_dl.dataset, dev)
        tau, rule = threshold_for_fpr(p_deg, tau_fpr), f"fpr<={tau_fpr:g}_degraded_val_reals"
        metrics["val_degraded_reals"] = {"n": int(p_deg.size),
                                         "false_fake": float((p_deg >= tau).mean())}
    metrics.update({"tau_rule": rule, "val": binary_metrics(y, p, tau),
                    "val_at_0.5": binary_metrics(y, p, 0.5)})
    test_recs = [r for r in read_index(data_root) if r["split"] == "test"]
    if test_recs:
        test_dl = loader(CropFiles(data_root, test_recs, model.input_size), batch_size, workers)
        yt, pt = predict_p_fake(model, test_dl, dev, amp)
        metrics["test"] = binary_metrics(yt, pt, tau)
    record.finish(thresholds={"tau_fake": tau}, metrics=metrics, best_epoch=state["best_epoch"],
                  epochs_run=state["epoch"], best_checkpoint=BEST_NAME)
    return record.data


@torch.no_grad()
def _degraded_val_p(model: nn.Module, val: CropFiles, dev: torch.device) -> np.ndarray:
    """p_fake of every val real, as stored and under each camera-like degradation."""
    reals = [to_uint8(val[i][0]) for i, r in enumerate(val.records) if int(r["label"]) == 0]
    crops = degraded_set(reals)
    model.eval()
    out = [model(torch.stack([to_tensor(c) for c in crops[i:i + 64]]).to(dev)).float()
           .softmax(1)[:, 1].cpu() for i in range(0, len(crops), 64)]
    return torch.cat(out).numpy()


def _save_last(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
    mask_head: MaskHead | None = None,
) -> None:
    save_checkpoint(path, {
        "model": model.net.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "state": state,
        "rng": rng_state(), "mask_head": mask_head.state_dict() if mask_head else None,
    })


def _restore(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    mask_head: MaskHead | None = None,
) -> dict[str, Any]:
    ckpt = load_checkpoint(path, next(model.parameters()).device)
    model.net.load_state_dict(ckpt["model"])
    if mask_head is not None and ckpt.get("mask_head"):
        mask_head.load_state_dict(ckpt["mask_head"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["state"]


def _data_info(
    root: Path, train: list[dict[str, Any]], val: list[dict[str, Any]]
) -> dict[str, Any]:
    def counts(recs: list[dict[str, Any]]) -> dict[str, int]:
        return {"real": sum(r["label"] == 0 for r in recs),
                "fake": sum(r["label"] == 1 for r in recs),
                "identities": len({r.get("identity") for r in recs})}

    meta = read_meta(root)
    keep = ("format", "kind", "source", "layout", "seed", "crop_size", "created", "licences")
    return {"root": str(root.resolve()), "train": counts(train), "val": counts(val),
            "dataset": {k: meta[k] for k in keep if k in meta}}
