"""The report's targets: computed from the evaluation numbers, and honest about thin cells."""

from __future__ import annotations

from typing import Any

import pytest

from app.training.report import compute_targets


def _cell(acc: float, n_attacked: int) -> dict[str, Any]:
    return {"accuracy": acc, "n_clean": 100, "n_attacked": n_attacked}


def _report(fgsm_attacked: int) -> dict[str, Any]:
    row = {"pgd": _cell(0.99, 40), "pgd_b": _cell(0.60, 40), "fgsm": _cell(0.98, fgsm_attacked),
           "apgd": _cell(0.90, 40), "nes": _cell(0.80, 40), "square": _cell(0.70, 40)}
    return {"split": "test", "adversarial": {"saliency/finetune": row},
            "detector": {"clean": {"auc": 0.9, "auc_by_method": {"blend": 0.97, "sbi": 0.93}}}}


def test_targets_use_sbi_auc_and_the_saliency_finetune_cells() -> None:
    g, pgd, gen, pgdb = compute_targets(_report(fgsm_attacked=40))
    assert g["value"] == 0.93 and not g["pass"] and g["gap"] == pytest.approx(-0.02)
    assert pgd["value"] == 0.99 and pgd["pass"]
    assert gen["value"] == pytest.approx((0.98 + 0.90 + 0.80 + 0.70) / 4) and gen["pass"]
    assert "accuracy ≈ clean" not in gen["detail"]
    assert pgdb["value"] == pytest.approx(0.39) and pgdb["pass"]


def test_an_attack_that_rarely_fooled_g_is_named_with_the_mean_without_it() -> None:
    gen = compute_targets(_report(fgsm_attacked=1))[2]
    assert gen["value"] == pytest.approx((0.98 + 0.90 + 0.80 + 0.70) / 4)  # the paper's mean
    assert "fgsm (1 attacked)" in gen["detail"] and "mean without them 80.00%" in gen["detail"]
