"""The worker's shared model batcher: face crops of every running job → g → XAI → d."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import numpy as np

from app.api.metrics import BATCH_SIZE, STAGE_SECONDS
from app.config import Settings, XaiMethod
from app.pipeline.analyze import Analyzer, FaceScore
from app.queue.batcher import Batcher

XAI_METHODS: tuple[str, ...] = get_args(XaiMethod)


@dataclass(frozen=True)
class CropItem:
    crop: np.ndarray  # uint8 RGB crop_size x crop_size
    method: str  # XAI method asked for by this crop's job


@dataclass
class ScoredCrop:
    score: FaceScore
    cost_ms: dict[str, float]  # this crop's share of the batch's stage times


def make_validator(crop_size: int) -> Callable[[CropItem], None]:
    """Checks run in the submitting job's thread, before the item may join a batch."""

    def validate(item: CropItem) -> None:
        c = item.crop
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (
            crop_size, crop_size, 3
        ):
            got = f"{getattr(c, 'shape', None)} {getattr(c, 'dtype', type(c).__name__)}"
            raise ValueError(f"face crop must be {crop_size}x{crop_size}x3 uint8, got {got}")
        if item.method not in XAI_METHODS:
            raise ValueError(f"unknown XAI method {item.method!r}; one of {XAI_METHODS}")

    return validate


def make_scorer(analyzer: Analyzer) -> Callable[[list[CropItem]], list[ScoredCrop]]:
    """One batched g → XAI → d pass; stage times go to metrics and are split over the items."""

    def score(items: list[CropItem]) -> list[ScoredCrop]:
        timings: dict[str, float] = {}
        scores = analyzer.score_crops([i.crop for i in items], [i.method for i in items], timings)
        for stage, ms in timings.items():
            STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
        share = {k: v / len(items) for k, v in timings.items()}
        return [ScoredCrop(s, dict(share)) for s in scores]

    return score


def build_batcher(analyzer: Analyzer, settings: Settings) -> Batcher[CropItem, ScoredCrop]:
    return Batcher(
        make_scorer(analyzer),
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        validate=make_validator(analyzer.crop_size),
        on_batch=lambda n, _s: BATCH_SIZE.observe(n),
        name="model-batcher",
    )
