"""``python -m app.models.placeholder``: untrained stores of any registered pair, for timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.models.placeholder import main
from app.models.store import MANIFEST_NAME, load_bundle


def test_other_architectures_give_a_labelled_untrained_store(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    main([str(tmp_path), "--detector", "regnetx002_df", "--seed", "3"])
    assert "(UNTRAINED)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["default"] == {"detector": "placeholder-detector-regnetx002_df",
                                   "adversarial": "placeholder-adversarial"}
    assert all(m["trained"] is False and "UNTRAINED" in m["description"]
               for m in manifest["models"])
    assert "--detector regnetx002_df" in manifest["models"][0]["training"]["command"]
    bundle = load_bundle(tmp_path, torch.device("cpu"))
    assert [m.trained for m in bundle.model_infos()] == [False, False]
    with pytest.raises(SystemExit):  # an architecture of the wrong role is refused
        main([str(tmp_path), "--detector", "detect_resnet50"])


def test_positional_seed_still_works(tmp_path: Path) -> None:
    main([str(tmp_path / "a"), "5"])
    main([str(tmp_path / "b"), "--seed", "5"])
    a, b = (json.loads((tmp_path / d / MANIFEST_NAME).read_text()) for d in ("a", "b"))
    assert [m["sha256"] for m in a["models"]] == [m["sha256"] for m in b["models"]]
