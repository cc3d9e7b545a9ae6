"""Attacked-crop sets for d (``dfshield train attack``): the paper's two classes, as PNG crops.

- "attacked" (label 1): FAKE crops g calls fake, attacked toward real, kept only if g calls the
  *stored* crop real. Crops are stored as lossless PNG, i.e. rounded to uint8: rounding can undo
  a perturbation that only just crossed the boundary, so every attacked crop is re-scored after
  the round-trip and the ones that no longer fool g are dropped (and counted).
- "clean" (label 0): REAL crops g calls real.

Crops are resized to g's input size first: the service crops faces at that size, so attacks,
XAI maps and d all see the exact tensors they see in serving. "g calls real" means
``p_fake < tau_fake`` with the detector run's validated threshold, so the attacks aim for a
logit margin of ``-logit(tau_fake) + margin_slack`` rather than only the argmax.
Maps are not stored: train_adversarial computes them from these PNGs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.training.attack_batch import (
    MARGIN_SLACK,
    AttackedBatch,
    attack_crops,
    kappa_for,
    p_fake_of,
)
from app.training.attack_mix import AttackJob, family_of, jobs_for
from app.training.benign import random_corruption
from app.training.common import (
    ProgressFn,
    RunRecord,
    atomic_write_text,
    load_trained,
    no_progress,
    pick_device,
    read_rgb,
    resize_rgb,
    seed_everything,
    to_tensor,
    to_uint8,
    write_png,
)
from app.training.data import read_index
from app.training.native_res import (
    BehindShrink,
    draw_side,
    native_overrides,
    shrink,
    stack,
)
from app.training.upload_path import surviving_copies

INDEX_NAME = "index.jsonl"
DATASET_NAME = "dataset.json"
SPLITS = ("train", "val", "test")
CHUNK = 512  # crops held in memory at once (full-size sets do not fit)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of an ``index.jsonl`` (attack sets are read with this, not the crop-dataset reader)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_crops(root: Path, records: Sequence[dict[str, Any]], size: int) -> torch.Tensor:
    if not records:
        return torch.zeros(0, 3, size, size)
    return torch.stack([to_tensor(resize_rgb(read_rgb(root / r["path"]), size)) for r in records])


def _pick(records: list[dict[str, Any]], limit: int | None, rng: np.random.Generator) -> list:
    if limit is None or len(records) <= limit:
        return records
    idx = np.sort(rng.choice(len(records), size=limit, replace=False))
    return [records[i] for i in idx]


def attack_set(
    data_root: Path,
    detector: Path | nn.Module,
    out: Path,
    attack: str = "pgd",
    splits: Sequence[str] = SPLITS,
    batch_size: int = 32,
    limit: int | None = None,
    limit_real: int | None = None,
    seed: int = 0,
    device: str = "auto",
    tau_fake: float | None = None,
    margin_slack: float = MARGIN_SLACK,
    overrides: dict[str, Any] | None = None,
    train_attacks: Sequence[str] | None = None,
    eps_grid: Sequence[float] | None = None,
    benign: int = 0,
    upload_copies: int = 0,
    native_share: float = 0.0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write ``out/index.jsonl`` + PNGs + ``dataset.json``; returns per-split stats.

    ``detector``: a train_detector run dir (its best checkpoint and tau_fake) or a model.
    ``limit``: at most this many fake crops attacked per split (``limit_real``: real crops
    kept per split, default ``limit``), drawn at random with ``seed``.
    ``train_attacks``: a mix of attacks (``attack_mix.py``) instead of the one ``attack``;
    each caught fake is attacked by one (attack, budget) job drawn at random, budgets over
    ``eps_grid`` (/255), ``overrides`` then per attack name. ``benign``: this many randomly
    corrupted copies of each clean crop join the clean class (``benign.py``), kept when g
    still calls them real. ``upload_copies``: this many copies of each kept attacked crop
    through a random JPEG / rescale (``upload_path.py``) join the attacked class while they
    still fool g. ``native_share``: this share of each job's faces is attacked at upload
    resolution, through the service's shrink to g's input (``native_res.py``).
    """
    args = {k: v for k, v in locals().items() if k not in ("progress", "detector")}
    args["detector"] = str(detector) if isinstance(detector, Path | str) else "<model>"
    data_root, out = Path(data_root), Path(out)
    seed_everything(seed)
    dev = pick_device(device)
    g, tau = _resolve_detector(detector, dev, tau_fake)
    size = g.input_size
    jobs = ([AttackJob(attack, attack, family_of(attack), dict(overrides or {}))]
            if not train_attacks else
            jobs_for(train_attacks, eps_grid, base=overrides))
    record = RunRecord.start(out, "attack_set", args, seed)
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    limit_real = limit if limit_real is None else limit_real
    t0 = time.perf_counter()
    for split in splits:
        recs = [r for r in read_index(data_root) if r["split"] == split]
        fakes = _pick([r for r in recs if int(r["label"]) == 1], limit, rng)
        reals = _pick([r for r in recs if int(r["label"]) == 0], limit_real, rng)
        ctx = _SplitCtx(g, data_root, out, split, size, tau, batch_size, seed, margin_slack,
                        progress or no_progress, rng, upload_copies, native_share)
        split_rows, stats[split] = _one_split(ctx, fakes, reals, jobs, benign)
        rows += split_rows
    atomic_write_text(out / INDEX_NAME, "".join(json.dumps(r) + "\n" for r in rows))
    meta = {"kind": "attack_set", "attack": attack if not train_attacks else "mix",
            "train_attacks": list(train_attacks or [attack]),
            "jobs": [{"label": j.label, "attack": j.attack, "family": j.family,
                      "overrides": j.overrides} for j in jobs],
            "benign_per_clean": benign, "upload_copies": upload_copies,
            "native_share": native_share, "tau_fake": tau,
            "crop_size": size,
            "detector": args["detector"], "source": str(data_root.resolve()),
            "classes": {"0": "clean", "1": "attacked"}, "stats": stats,
            "overrides": overrides or {}, "kappa": kappa_for(tau, margin_slack)}
    atomic_write_text(out / DATASET_NAME, json.dumps(meta, indent=2) + "\n")
    record.add_timing("attack_set", time.perf_counter() - t0)
    record.finish(metrics=stats, tau_fake=tau, crop_size=size)
    return meta


def _resolve_detector(
    detector: Path | nn.Module, dev: torch.device, tau_fake: float | None
) -> tuple[nn.Module, float]:
    if isinstance(detector, nn.Module):
        return detector.to(dev).eval(), 0.5 if tau_fake is None else tau_fake
    g, rec = load_trained(Path(detector), dev)
    tau = rec.get("thresholds", {}).get("tau_fake", 0.5) if tau_fake is None else tau_fake
    return g, float(tau)


@dataclass
class _SplitCtx:
    g: nn.Module
    root: Path
    out: Path
    split: str
    size: int
    tau: float
    batch_size: int
    seed: int
    margin_slack: float
    progress: ProgressFn
    rng: np.random.Generator
    upload_copies: int = 0
    native_share: float = 0.0


def _one_split(
    ctx: _SplitCtx,
    fakes: list[dict[str, Any]],
    reals: list[dict[str, Any]],
    jobs: Sequence[AttackJob],
    benign: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows, n_benign = [], 0
    for start in range(0, len(reals), CHUNK):
        part = _clean_rows(ctx, reals[start:start + CHUNK], start, benign)
        rows += part
        n_benign += sum(r["attack"] != "clean" for r in part)
    n_clean, n_caught, results, per_job = len(rows) - n_benign, 0, [], {}
    n_native = 0
    for start in range(0, len(fakes), CHUNK):
        recs = fakes[start:start + CHUNK]
        x_fake = load_crops(ctx.root, recs, ctx.size)
        p_fake = p_fake_of(ctx.g, x_fake, ctx.batch_size)
        caught = (p_fake >= ctx.tau).nonzero().squeeze(1)
        n_caught += int(caught.numel())
        which = ctx.rng.permutation(len(caught)) % len(jobs)
        for j, job in enumerate(jobs):
            sel = caught[torch.from_numpy(np.flatnonzero(which == j))]
            # drawn only when asked for: the default recipe keeps its random stream
            native = (ctx.rng.random(len(sel)) < ctx.native_share if ctx.native_share > 0
                      else np.zeros(len(sel), bool))
            if native.any():
                res_n, part = _native_rows(ctx, recs, p_fake,
                                           sel[torch.from_numpy(native)].tolist(), start, job,
                                           ctx.seed + start + j)
                results.append(res_n)
                per_job.setdefault(f"{job.label}+native", []).append(res_n)
                rows += part
                n_native += len(part)
                sel = sel[torch.from_numpy(~native)]
            res = attack_crops(ctx.g, x_fake[sel], job.attack, ctx.tau, ctx.batch_size,
                               ctx.seed + start + j, ctx.margin_slack,
                               overrides=job.overrides, progress=ctx.progress)
            results.append(res)
            per_job.setdefault(job.label, []).append(res)
            rows += _attacked_rows(ctx, recs, sel.tolist(), start, job.label, p_fake, res)
            rows += _upload_rows(ctx, recs, x_fake, sel.tolist(), start, job.label, p_fake, res)
    merged = AttackedBatch.cat(results)
    stats = {"real": len(reals), "real_called_real": n_clean, "benign_kept": n_benign,
             "fake": len(fakes), "fake_called_fake": n_caught, **merged.stats(),
             "attacked_kept": int(merged.fooled.sum()), "native_kept": n_native}
    if len(jobs) > 1:
        stats["jobs"] = {k: {**(b := AttackedBatch.cat(v)).stats(),
                             "kept": int(b.fooled.sum())} for k, v in per_job.items()}
    return rows, stats


def _clean_rows(
    ctx: _SplitCtx, recs: list[dict[str, Any]], start: int, benign: int
) -> list[dict[str, Any]]:
    """Real crops g calls real, plus ``benign`` corrupted copies of each that g still does."""
    rows: list[dict[str, Any]] = []
    x_real = load_crops(ctx.root, recs, ctx.size)
    p_real = p_fake_of(ctx.g, x_real, ctx.batch_size).tolist()
    kept = [(i, to_uint8(x_real[i])) for i, p in enumerate(p_real) if p < ctx.tau]
    for i, img in kept:
        path = f"{ctx.split}/clean/{start + i:06d}.png"
        write_png(ctx.out / path, img)
        rows.append(_row(recs[i], path, 0, ctx.split, "clean", p_real[i], p_real[i], 0.0, None))
    if benign <= 0 or not kept:
        return rows
    copies = [(i, k, *random_corruption(img, ctx.rng)) for i, img in kept for k in range(benign)]
    x_c = torch.stack([to_tensor(c[2]) for c in copies])
    for (i, k, img, names), p in zip(copies, p_fake_of(ctx.g, x_c, ctx.batch_size).tolist(),
                                     strict=True):
        if p < ctx.tau:
            path = f"{ctx.split}/benign/{start + i:06d}_{k}.png"
            write_png(ctx.out / path, img)
            linf = float(np.abs(img.astype(np.int16) - to_uint8(x_real[i])).max()) / 255
            rows.append(_row(recs[i], path, 0, ctx.split, f"benign:{names}", p_real[i], p,
                             linf, None))
    return rows


def _attacked_rows(
    ctx: _SplitCtx, recs: list[dict[str, Any]], picked: list[int], start: int, label: str,
    p_fake: torch.Tensor, res: AttackedBatch,
) -> list[dict[str, Any]]:
    rows = []
    for j, k in enumerate(picked):
        if res.fooled[j]:
            path = f"{ctx.split}/attacked/{start + k:06d}.png"
            write_png(ctx.out / path, res.adv[j])
            q = None if res.queries is None else int(res.queries[j])
            rows.append(_row(recs[k], path, 1, ctx.split, label, float(p_fake[k]),
                             float(res.p_fake_after[j]), float(res.linf[j]), q))
    return rows


def _native_rows(
    ctx: _SplitCtx, recs: list[dict[str, Any]], p_fake: torch.Tensor, picked: list[int],
    start: int, job: AttackJob, seed: int,
) -> tuple[AttackedBatch, list[dict[str, Any]]]:
    """Attack ``picked`` at upload resolution; rows are the shrunk crops that still fool g."""
    side = draw_side(ctx.rng, ctx.size)
    x_hi = load_crops(ctx.root, [recs[k] for k in picked], side)
    res = attack_crops(BehindShrink(ctx.g, ctx.size), x_hi, job.attack, ctx.tau,
                       ctx.batch_size, seed, ctx.margin_slack,
                       overrides=native_overrides(job.attack, job.overrides, side, ctx.size),
                       progress=ctx.progress)
    small = shrink(res.adv, ctx.size)
    if not small:
        return res, []
    p_after = p_fake_of(ctx.g, stack(small), ctx.batch_size).tolist()
    # The budget is the attack's, measured after the shrink against the shrunk clean upload
    # (the 128 px crop resampled from the source differs from it by rounding).
    clean = shrink([to_uint8(x) for x in x_hi], ctx.size)
    rows = []
    for j, k in enumerate(picked):
        if res.fooled[j] and p_after[j] < ctx.tau:
            path = f"{ctx.split}/attacked/{start + k:06d}_n.png"
            write_png(ctx.out / path, small[j])
            linf = float(np.abs(small[j].astype(np.int16) - clean[j]).max()) / 255
            label = f"{job.label}+native{side / ctx.size:.2f}"
            q = None if res.queries is None else int(res.queries[j])
            rows.append(_row(recs[k], path, 1, ctx.split, label, float(p_fake[k]), p_after[j],
                             linf, q))
    return res, rows


def _upload_rows(
    ctx: _SplitCtx, recs: list[dict[str, Any]], x_fake: torch.Tensor, picked: list[int],
    start: int, label: str, p_fake: torch.Tensor, res: AttackedBatch,
) -> list[dict[str, Any]]:
    """Upload-path copies (JPEG / rescale) of the kept attacked crops that still fool g."""
    kept = [j for j in range(len(picked)) if res.fooled[j]]
    if ctx.upload_copies <= 0 or not kept:
        return []
    copies = surviving_copies([res.adv[j] for j in kept], ctx.upload_copies, ctx.rng,
                              lambda x: p_fake_of(ctx.g, x, ctx.batch_size), ctx.tau)
    rows = []
    for i, k, img, name, p in copies:
        src = picked[kept[i]]
        path = f"{ctx.split}/attacked/{start + src:06d}_u{k}.png"
        write_png(ctx.out / path, img)
        orig = to_uint8(x_fake[src])
        linf = float(np.abs(img.astype(np.int16) - orig).max()) / 255
        rows.append(_row(recs[src], path, 1, ctx.split, f"{label}+{name}",
                         float(p_fake[src]), p, linf, None))
    return rows


def _row(
    src: dict[str, Any], path: str, label: int, split: str, attack: str,
    p_before: float, p_after: float, linf: float, queries: int | None,
) -> dict[str, Any]:
    return {
        "path": path, "label": label, "split": split, "source": src.get("source"),
        "identity": src.get("identity"), "method": src.get("method"), "frame": src.get("frame"),
        "attack": attack, "orig_path": src["path"], "orig_label": int(src["label"]),
        "p_fake_before": round(p_before, 6), "p_fake_after": round(p_after, 6),
        "linf": round(linf, 6), "queries": queries,
    }


