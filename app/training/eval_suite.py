"""The evaluation suite: one detector's attacks on one set of fakes (uint8 crops, re-judged by
g after rounding), the trained ds next to it, and the maps and scores both need. Shared by the
paper's tables (``evaluate.py``), section (h) (``robust_eval.py``) and the videos (``e2e.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.pipeline.explain import Explainer
from app.training.attack_batch import MARGIN_SLACK, AttackedBatch, attack_crops, p_fake_of
from app.training.common import ProgressFn, load_trained, read_rgb, resize_rgb

log = logging.getLogger("dfshield.training")


@dataclass
class DModel:
    """One trained adversarial detector with what it was trained on."""

    key: str  # "<xai>/<mode>"
    model: nn.Module
    xai: str
    mode: str
    tau: float
    run_dir: str


@dataclass
class Crops:
    records: list[dict[str, Any]]
    x: torch.Tensor  # uint8 [N,3,S,S]

    def float(self, idx: Sequence[int] | None = None) -> torch.Tensor:
        x = self.x if idx is None else self.x[list(idx)]
        return x.float().div_(255.0)


@dataclass
class Suite:
    """Attacks of one detector on one set of fakes."""

    g: nn.Module
    tau: float
    fakes: Crops
    reals: Crops
    p_fake: np.ndarray  # g on the clean fakes
    p_real: np.ndarray  # g on the clean reals
    caught: np.ndarray  # positions of fakes g calls fake
    slack: float = MARGIN_SLACK  # logit margin beyond tau_fake the attacks aim for
    results: dict[str, AttackedBatch] = field(default_factory=dict)

    def attacked_x(self, name: str) -> torch.Tensor:
        res = self.results[name]
        keep = [a for a, ok in zip(res.adv, res.fooled, strict=True) if ok]
        if not keep:
            return torch.zeros(0, *self.fakes.x.shape[1:])
        return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in keep]).float() / 255

    def clean_x(self) -> torch.Tensor:
        return self.reals.float(np.flatnonzero(self.p_real < self.tau))

    def after_x(self, name: str) -> torch.Tensor:
        """Every selected fake after the attack (the attacked uint8 crop where g caught it)."""
        x = self.fakes.x.clone()
        adv = self.results[name].adv
        if adv:
            x[self.caught] = torch.from_numpy(np.stack(adv)).permute(0, 3, 1, 2)
        return x.float() / 255.0

    def p_after(self, name: str) -> np.ndarray:
        """g's p_fake on every selected fake after the attack (unattacked = not caught)."""
        p = self.p_fake.copy()
        p[self.caught] = self.results[name].p_fake_after
        return p


def load_crops_u8(root: Path, records: list[dict[str, Any]], size: int) -> Crops:
    if not records:
        return Crops([], torch.zeros(0, 3, size, size, dtype=torch.uint8))
    arrs = [resize_rgb(read_rgb(root / r["path"]), size) for r in records]
    return Crops(records, torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous())


def select_records(records: list[dict[str, Any]], limit: int | None, seed: int) -> list:
    if limit is None or len(records) <= limit:
        return records
    idx = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[i] for i in idx]


def build_suite(
    g: nn.Module, tau: float, root: Path, fakes: list, reals: list, batch_size: int,
    slack: float = MARGIN_SLACK,
) -> Suite:
    size = g.input_size
    f, r = load_crops_u8(root, fakes, size), load_crops_u8(root, reals, size)
    p_f = p_fake_of(g, f.float(), batch_size).numpy()
    p_r = p_fake_of(g, r.float(), batch_size).numpy()
    return Suite(g, tau, f, r, p_f, p_r, np.flatnonzero(p_f >= tau), slack)


def run_attacks(
    suite: Suite,
    names: Sequence[str],
    overrides: dict[str, dict[str, Any]],
    batch_size: int,
    seed: int,
    progress: ProgressFn,
    adversarial: nn.Module | None = None,
    variants: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> None:
    """Attack the caught fakes with each attack (``variants``: label → (attack, extra kw))."""
    jobs = variants or {n: (n, {}) for n in names}
    x = suite.fakes.float(suite.caught)
    for label, (attack, extra) in jobs.items():
        kw = {**overrides.get(attack, {}), **extra}
        if attack == "adaptive_eq4" and adversarial is not None:
            kw.setdefault("detector", adversarial)
        suite.results[label] = attack_crops(
            suite.g, x, attack, suite.tau, batch_size, seed, suite.slack,
            adversarial=adversarial, overrides=kw, progress=progress)
        log.info("attack %s: %s", label, suite.results[label].stats())


@torch.no_grad()
def p_attacked(d: DModel, x: torch.Tensor, maps: torch.Tensor, batch_size: int) -> np.ndarray:
    dev = next(d.model.parameters()).device
    out = [d.model(c.to(dev), m.to(dev)).float().softmax(1)[:, 1].cpu()
           for c, m in zip(x.split(batch_size), maps.split(batch_size), strict=True)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def compute_maps(g: nn.Module, xai: str, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if len(x) == 0:
        return torch.zeros(0, 3, g.input_size, g.input_size)
    dev = next(g.parameters()).device
    ex = Explainer(g, xai)
    return torch.cat([ex.maps(c.to(dev)).cpu() for c in x.split(batch_size)])


def primary_d(ds: Sequence[DModel]) -> DModel | None:
    """The served configuration when present (Saliency, fine-tuned), else the first d."""
    return next((d for d in ds if d.key == "saliency/finetune"), ds[0] if ds else None)


def load_d_models(runs: Sequence[Path], dev: torch.device) -> list[DModel]:
    out = []
    for run in runs:
        model, rec = load_trained(Path(run), dev)
        xai, mode = rec.get("xai", "saliency"), rec.get("mode", "finetune")
        out.append(DModel(f"{xai}/{mode}", model, xai, mode,
                          float(rec.get("thresholds", {}).get("tau_attacked", 0.5)), str(run)))
    return out
