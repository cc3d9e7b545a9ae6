"""Train the adversarial detector d on an attack set (``dfshield train adversarial``).

Inputs are (crop, Explainer(g, xai).maps(crop)) with clean = 0, attacked = 1; the split comes
from the attack set, which inherits it (by identity) from the crop dataset. Maps are computed
from the stored PNG crops with g in eval mode, so they are deterministic: each is computed once,
on first use, and kept in memory (fp16, up to ``map_cache_mb``) for the later epochs.

Adam (the paper's lr 1e-3, betas, eps) with a cosine schedule, balanced sampling; the best
epoch is the one with the highest val balanced accuracy (at that epoch's best threshold), and
tau_attacked is then chosen on val (Youden J).

Modes (paper §4): ``finetune`` trains everything; ``frozen`` trains the head only. Offline there
are no ImageNet weights, so the backbone starts from g's trained backbone when the architectures
match (``init_backbone="auto"``; the small pair resnet10t_df / detect_resnet10t does), else from
a user-given safetensors file, else random (recorded either way).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from app.config import REPO_ROOT
from app.models.backbone import init_from_backbone
from app.models.registry import create_model
from app.pipeline.explain import Explainer
from app.training.attack_mix import family_of
from app.training.attack_set import DATASET_NAME, INDEX_NAME, read_jsonl
from app.training.common import (
    BEST_NAME,
    LAST_NAME,
    CropFiles,
    ProgressFn,
    RunRecord,
    autocast,
    balanced_sampler,
    load_checkpoint,
    load_trained,
    loader,
    make_scaler,
    no_progress,
    optimizer_step,
    pick_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from app.training.metrics import binary_metrics, choose_threshold, threshold_for_fpr
from app.training.train_detector import calibration_crops

log = logging.getLogger("dfshield.training")
MODES = ("finetune", "frozen")
MapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MapCache:
    """XAI maps of g for crops identified by their attack-set path, computed once on first use.

    ``store`` may be shared between runs on the same g and XAI method (leave-one-family-out
    retrains d many times on subsets of one set: the maps are the same every time).
    """

    def __init__(self, g: nn.Module, xai: str, limit_mb: float = 2048.0,
                 store: dict[Any, torch.Tensor] | None = None) -> None:
        self.explainer = Explainer(g, xai)
        self.limit_bytes = limit_mb * 2**20
        self.store: dict[Any, torch.Tensor] = {} if store is None else store
        self.used = sum(m.numel() * 2 for m in self.store.values())
        self.computed = 0

    def maps(self, keys: list[Any], x: torch.Tensor) -> torch.Tensor:
        missing = [j for j, k in enumerate(keys) if k not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            computed = self.explainer.maps(x[missing])
            self.computed += len(missing)
            for j, m in zip(missing, computed, strict=True):
                fresh[j] = m
                if self.used + m.numel() * 2 <= self.limit_bytes:
                    self.store[keys[j]] = m.detach().to("cpu", torch.float16)
                    self.used += m.numel() * 2
        dev = x.device
        return torch.stack([
            fresh[j] if j in fresh else self.store[k].to(dev, torch.float32)
            for j, k in enumerate(keys)
        ])

    def fn(self, rows: list[dict[str, Any]]) -> MapFn:
        """Maps for a loader over ``rows`` (it yields positions into them)."""
        return lambda x, idx: self.maps([rows[int(i)]["path"] for i in idx], x)


@torch.no_grad()
def predict_p_attacked(
    d: nn.Module,
    dl: torch.utils.data.DataLoader,
    map_fn: MapFn,
    device: torch.device,
    amp: bool = False,
    zero_maps: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p_attacked); ``zero_maps`` is the paper's PGD-B ablation (maps set to 0)."""
    d.eval()
    labels, probs = [], []
    for x, y, idx in dl:
        x = x.to(device)
        m = torch.zeros_like(x) if zero_maps else _maps_like(map_fn(x, idx), x)
        with autocast(device, amp):
            logits = d(x, m)
        probs.append(logits.float().softmax(1)[:, 1].cpu())
        labels.append(y)
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0)
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()


def _maps_like(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Maps are at g's input size; crops too (attack sets store them so): d resizes both.
    return m.to(x.device, x.dtype)


def init_backbone(d: nn.Module, g: nn.Module, how: str = "auto",
                  models_dir: Path = REPO_ROOT / "models",
                  calib: torch.Tensor | None = None) -> str:
    """Initialise d's shared backbone: ``auto`` | ``g`` | ``none`` | ``backbone:NAME`` (a
    pretrained backbone of the model store) | path to a safetensors file."""
    backbone = d.net.backbone
    if how == "none":
        return "random"
    if how.startswith("backbone:"):
        name = how.split(":", 1)[1]
        # The stored trunk is unfolded on the CPU; d may already sit on the GPU.
        norm = None if calib is None else d.prep(calib.to(d.prep.mean.device)).cpu()
        init_from_backbone(d.net, models_dir, name, norm)
        return f"backbone:{name}"
    target = backbone.state_dict()
    if how in ("auto", "g"):
        src = g.net.state_dict()
        # g's trunk is either its whole net (timm ResNet + fc) or its ``backbone`` submodule.
        src = {k.removeprefix("backbone."): v for k, v in src.items()}
        match = {k: v for k, v in src.items() if k in target and target[k].shape == v.shape}
        if len(match) == len(target):
            backbone.load_state_dict(match, strict=True)
            return f"detector:{g.spec.name}"
        if how == "g":
            raise ValueError(f"g ({g.spec.name}) and d's backbone do not share an architecture")
        return "random"
    state = load_file(how)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if len(missing) == len(target):
        raise ValueError(f"{how} has no tensor matching d's backbone; check the key names")
    return f"file:{how} (missing {len(missing)}, ignored {len(unexpected)})"


def train_adversarial(
    attack_root: Path,
    run_dir: Path,
    detector: Path | nn.Module,
    arch: str = "detect_resnet10t",
    xai: str = "saliency",
    mode: str = "finetune",
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    patience: int = 3,
    max_steps_per_epoch: int | None = None,
    backbone_init: str = "auto",
    models_dir: Path = REPO_ROOT / "models",
    map_cache_mb: float = 2048.0,
    workers: int = 0,
    tau_far: float | None = None,
    exclude_families: tuple[str, ...] | list[str] = (),
    map_store: dict[Any, torch.Tensor] | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train d; returns the run record (also in ``run_dir/record.json``).

    ``tau_far``: choose tau_attacked for at most this false-alarm rate on the val clean class
    (benign corruptions included) instead of Youden's J, which sits at the midpoint of
    whatever attacks val holds and says nothing about false alarms.
    ``exclude_families``: attacked rows of these families (``attack_mix.FAMILY``) are left out
    of train and val but kept in test: leave-one-family-out, the honest "unseen attack" test.
    ``map_store``: a dict shared with other runs on the same g and ``xai`` (see MapCache).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    args = {k: v for k, v in locals().items() if k not in ("progress", "detector")}
    args["detector"] = str(detector) if isinstance(detector, Path | str) else "<model>"
    progress = progress or no_progress
    attack_root, run_dir = Path(attack_root), Path(run_dir)
    seed_everything(seed)
    dev = pick_device(device)
    g = load_trained(Path(detector), dev)[0] if not isinstance(detector, nn.Module) else detector
    g = g.to(dev).eval()
    arch_kwargs = {"freeze_backbone": mode == "frozen"}
    d = create_model(arch, **arch_kwargs).to(dev)
    rows = [r for r in read_jsonl(attack_root / INDEX_NAME)
            if r["split"] == "test" or family_of(_attack_of(r)) not in exclude_families]
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not train_rows or not val_rows:
        raise ValueError(f"{attack_root} needs train and val rows; re-run the attack stage")
    size = g.input_size
    calib = (calibration_crops(attack_root, train_rows, size)
             if backbone_init.startswith("backbone:") else None)
    init = init_backbone(d, g, backbone_init, models_dir, calib)
    cache = MapCache(g, xai, map_cache_mb, map_store)
    train_dl = loader(CropFiles(attack_root, train_rows, size), batch_size, workers,
                      balanced_sampler([r["label"] for r in train_rows], seed),
                      drop_last=len(train_rows) > batch_size)
    val_dl = loader(CropFiles(attack_root, val_rows, size), batch_size, workers)
    params = [p for p in d.net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    scaler = make_scaler(dev, amp)
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad": 0,
                             "history": []}
    if resume and (run_dir / LAST_NAME).is_file():
        ckpt = load_checkpoint(run_dir / LAST_NAME, dev)
        d.net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
    record = RunRecord.start(run_dir, "adversarial", args, seed)
    record.update(arch=arch, arch_kwargs=arch_kwargs, input_size=d.input_size, xai=xai,
                  mode=mode, device=str(dev), backbone_init=init,
                  detector_arch=g.spec.name, crop_size=size,
                  data={"root": str(attack_root.resolve()), "train": _counts(train_rows),
                        "val": _counts(val_rows), "attack_set": _attack_meta(attack_root)})
    t_start = time.perf_counter()
    for epoch in range(state["epoch"], epochs):
        if state["bad"] >= patience:
            break
        t0 = time.perf_counter()
        loss = _epoch(d, train_dl, cache.fn(train_rows), opt, scaler, dev, amp,
                      max_steps_per_epoch, progress, f"adversarial {xai}/{mode} "
                      f"epoch {epoch + 1}/{epochs}")
        sched.step()
        y, p = predict_p_attacked(d, val_dl, cache.fn(val_rows), dev, amp)
        val = binary_metrics(y, p, 0.5)
        # Selection: balanced accuracy at the epoch's own best val threshold (the threshold is
        # re-chosen on val at the end anyway); accuracy at 0.5 swings with calibration alone.
        tuned = binary_metrics(y, p, choose_threshold(y, p))
        row = {"epoch": epoch + 1, "train_loss": loss,
               "val_balanced_accuracy_tuned": tuned["balanced_accuracy"],
               "val_accuracy": val["accuracy"], "val_auc": val["auc"],
               "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 2)}
        state["history"].append(row)
        log.info("adversarial %s", row)
        score = tuned["balanced_accuracy"] or 0.0
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad=0)
            save_checkpoint(run_dir / BEST_NAME, {"model": d.net.state_dict(),
                                                  "epoch": epoch + 1})
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        save_checkpoint(run_dir / LAST_NAME, {
            "model": d.net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "state": state,
            "rng": rng_state()})
        record.update(history=state["history"])
    record.add_timing("train", time.perf_counter() - t_start)
    record.update(map_cache={"computed": cache.computed, "cached_mb": cache.used / 2**20})
    return _finish(record, d, rows, attack_root, size, cache, val_dl, dev, amp, batch_size,
                   workers, state, tau_far)


def _epoch(
    d: nn.Module,
    dl: torch.utils.data.DataLoader,
    map_fn: MapFn,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dev: torch.device,
    amp: bool,
    max_steps: int | None,
    progress: ProgressFn,
    stage: str,
) -> float:
    steps = len(dl) if max_steps is None else min(len(dl), max_steps)
    total, n = 0.0, 0
    for step, (x, y, idx) in enumerate(dl):
        if step >= steps:
            break
        x, y = x.to(dev), y.to(dev)
        m = _maps_like(map_fn(x, idx), x)  # before d.train(): the explainer sets g to eval
        d.train()
        with autocast(dev, amp):
            loss = F.cross_entropy(d(x, m).float(), y)
        optimizer_step(loss, opt, scaler)
        total, n = total + float(loss.detach()) * len(y), n + len(y)
        progress(stage, step + 1, steps)
    return total / max(n, 1)


def _finish(
    record: RunRecord,
    d: nn.Module,
    rows: list[dict[str, Any]],
    root: Path,
    size: int,
    cache: MapCache,
    val_dl: torch.utils.data.DataLoader,
    dev: torch.device,
    amp: bool,
    batch_size: int,
    workers: int,
    state: dict[str, Any],
    tau_far: float | None = None,
) -> dict[str, Any]:
    """Best epoch back, tau_attacked on val (Youden J or a stated FAR), val and test metrics."""
    d.net.load_state_dict(load_checkpoint(record.run_dir / BEST_NAME, dev)["model"])
    val_rows = [r for r in rows if r["split"] == "val"]
    y, p = predict_p_attacked(d, val_dl, cache.fn(val_rows), dev, amp)
    tau = choose_threshold(y, p) if tau_far is None else threshold_for_fpr(p[y == 0], tau_far)
    metrics: dict[str, Any] = {"val": binary_metrics(y, p, tau),
                               "val_at_0.5": binary_metrics(y, p, 0.5),
                               "val_by_attack": rates_by_attack(val_rows, p, tau)}
    test_rows = [r for r in rows if r["split"] == "test"]
    if test_rows:
        dl = loader(CropFiles(root, test_rows, size), batch_size, workers)
        yt, pt = predict_p_attacked(d, dl, cache.fn(test_rows), dev, amp)
        metrics["test"] = binary_metrics(yt, pt, tau)
        metrics["test_at_0.5"] = binary_metrics(yt, pt, 0.5)
        metrics["test_by_attack"] = rates_by_attack(test_rows, pt, tau)
    record.finish(thresholds={"tau_attacked": tau,
                              "rule": "youden" if tau_far is None else f"far<={tau_far}"},
                  metrics=metrics,
                  best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                  best_checkpoint=BEST_NAME)
    return record.data


def rates_by_attack(
    rows: list[dict[str, Any]], p: np.ndarray, tau: float
) -> dict[str, dict[str, float | int]]:
    """Share flagged (p ≥ tau) per row group: each attack label, ``clean``, ``benign``."""
    groups: dict[str, list[float]] = {}
    for r, pi in zip(rows, np.asarray(p).tolist(), strict=True):
        key = "benign" if _attack_of(r).startswith("benign:") else _attack_of(r)
        groups.setdefault(key, []).append(pi)
    return {k: {"n": len(v), "flagged": float(np.mean(np.asarray(v) >= tau))}
            for k, v in sorted(groups.items())}


def _attack_of(row: dict[str, Any]) -> str:
    """A row's attack label; sets written by hand (or older tools) may only carry the class."""
    return str(row.get("attack") or ("clean" if int(row["label"]) == 0 else "attacked"))


def _attack_meta(root: Path) -> dict[str, Any]:
    path = root / DATASET_NAME
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    keep = ("attack", "train_attacks", "benign_per_clean", "tau_fake", "kappa", "crop_size",
            "detector", "source", "overrides")
    return {k: meta[k] for k in keep if k in meta}


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {"clean": sum(r["label"] == 0 for r in rows),
            "attacked": sum(r["label"] == 1 for r in rows),
            "identities": len({r.get("identity") for r in rows})}
