"""How g holds up when the same faces arrive re-encoded or soft (report section (a), robustness).

A detector that separates stored test crops can still lean on cues an upload destroys or fakes:
the compression grid of the source, or fine texture. Each condition re-scores the *same* test
crops after one change applied to reals and fakes alike: JPEG re-encoding (an upload through one
more encoder), and down-then-up sampling (a face that arrived small or soft). Reported: AUC, and
the share of reals called fake at tau_fake (false alarms).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.training.common import CropFiles, loader, to_tensor, to_uint8
from app.training.crop_augment import JpegAt
from app.training.metrics import binary_metrics
from app.training.online_sbi import soften
from app.training.train_detector import predict_p_fake

Transform = Callable[[torch.Tensor], torch.Tensor]


class Soften:
    """``online_sbi.soften`` on a [3,H,W] tensor in [0,1]."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return to_tensor(soften(to_uint8(x), self.factor))


CONDITIONS: dict[str, Transform] = {
    "JPEG q90": JpegAt(90),
    "JPEG q75": JpegAt(75),
    "soft x0.5": Soften(0.5),
}


def _row(y: np.ndarray, p: np.ndarray, tau: float) -> dict[str, Any]:
    m = binary_metrics(y, p, tau)
    return {"auc": m["auc"], "false_alarm": 1.0 - m["tnr"] if m["n_neg"] else None,
            "miss": 1.0 - m["tpr"] if m["n_pos"] else None,
            "p_fake_real_median": float(np.median(p[y == 0])) if m["n_neg"] else None}


def robustness(
    g: nn.Module, tau: float, root: Path, recs: list[dict[str, Any]], batch_size: int,
    dev: torch.device, stored: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """AUC and false-alarm rate of g on ``recs`` as stored (``stored`` = the labels and p_fake
    the clean pass already computed) and under each of ``CONDITIONS``."""
    rows = {"as stored": _row(*stored, tau)}
    for name, transform in CONDITIONS.items():
        dl = loader(CropFiles(root, recs, g.input_size, transform), batch_size)
        rows[name] = _row(*predict_p_fake(g, dl, dev, amp=False), tau)
    return {"tau": tau, "n": len(recs), "rows": rows}
