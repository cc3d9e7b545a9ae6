"""Training core end to end on a tiny synthetic crop dataset, with the real small models.

g (resnet10t_df) → PGD attack set → d (detect_resnet10t, saliency) → evaluate → publish →
the service's loader and Analyzer. Budgets are tiny; what is checked is the plumbing and the
invariants (records, checkpoints, resumability, L∞ budget, PNG round-trip, manifest).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.models.store import load_bundle, load_manifest
from app.pipeline.analyze import Analyzer
from app.schemas import Thresholds
from app.training.attack_set import attack_set, read_jsonl
from app.training.common import RunRecord, load_checkpoint, load_trained
from app.training.crop_augment import Augment
from app.training.evaluate import evaluate
from app.training.metrics import choose_threshold
from app.training.publish import publish
from app.training.sbi import canonical_landmarks
from app.training.train_adversarial import train_adversarial
from app.training.train_detector import train_detector
from tests.mediagen import DATA_DIR, clip_from_image

SIDE = 48
EPS = 16 / 255
LANDMARKS = np.round(canonical_landmarks(SIDE), 1).tolist()
TINY_ATTACKS = {
    "pgd": {"iters": 5},
    "apgd": {"iters": 4, "restarts": 1},
    "nes": {"iters": 2, "restarts": 1, "n_pairs": 2},
    "square": {"max_queries": 10},
    "adaptive_eq3": {"iters": 2},
    "adaptive_eq4": {"iters": 2},
}


def _crop(rng: np.random.Generator, base: np.ndarray, fake: bool, frame: int) -> np.ndarray:
    """A smooth 'face' on a tinted background; fakes carry a bright blending ring around it."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    r2 = (yy - SIDE / 2) ** 2 / 200 + (xx - SIDE / 2) ** 2 / 120
    img = np.ones((SIDE, SIDE, 3)) * base + 0.08 * np.sin(xx / (4 + frame))[..., None]
    img[r2 < 1] += 0.15
    if fake:
        img[(r2 > 0.75) & (r2 < 1.15)] += 0.35
    img += rng.normal(0, 0.01, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def build_tiny_dataset(root: Path, identities: int = 10, per: int = 2) -> None:
    """~40 crops in the crop-dataset format; splits by identity (6 train, 2 val, 2 test).
    Every crop carries 5 landmarks, as ``prepare`` writes them (online SBI needs them)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(identities):
        split = "train" if i < 6 else ("val" if i < 8 else "test")
        base = rng.uniform(0.3, 0.6, 3)
        for label, kind in ((0, "real"), (1, "fake")):
            for f in range(per):
                rel = f"crops/{split}/{kind}/id{i}_{f}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img = _crop(rng, base, bool(label), f)
                cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                rows.append({"path": rel, "label": label, "split": split,
                             "source": f"id{i}-{'sbi' if label else 'original'}",
                             "identity": f"id{i}", "method": "sbi" if label else "original",
                             "frame": f, "landmarks": LANDMARKS})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.json").write_text(json.dumps({"format": "dfshield-crops/1"}))


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def add_videos(root: Path) -> None:
    """Two test-split videos in dataset.json, as demo-data lists them: one portrait clip stored
    twice, labelled real and fake (same bytes, so exactly one verdict can be right)."""
    (root / "videos").mkdir()
    clip = clip_from_image(DATA_DIR / "obama.jpg", root / "videos" / "real_obama.mp4",
                           seconds=0.8, fps=5.0, size=(240, 300))
    (root / "videos" / "fake_obama.mp4").write_bytes(clip.read_bytes())
    meta = json.loads((root / "dataset.json").read_text())
    meta["videos"] = [{"path": f"videos/{kind}_obama.mp4", "identity": "obama", "split": "test",
                       "label": label, "frames": 4} for label, kind in ((0, "real"), (1, "fake"))]
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    build_tiny_dataset(root / "data")
    add_videos(root / "data")
    return root


@pytest.fixture(scope="module")
def g_run(work: Path) -> Path:
    run = work / "g"
    train_detector(work / "data", run, epochs=2, batch_size=8, lr=3e-3, patience=5,
                   device="cpu", seed=0)
    return run


@pytest.fixture(scope="module")
def att_root(work: Path, g_run: Path) -> Path:
    out = work / "att"
    attack_set(work / "data", g_run, out, batch_size=8, device="cpu", seed=0,
               overrides={"iters": 10})
    return out


@pytest.fixture(scope="module")
def d_run(work: Path, att_root: Path, g_run: Path) -> Path:
    run = work / "d"
    train_adversarial(att_root, run, g_run, epochs=1, batch_size=8, device="cpu")
    return run


def test_detector_run_has_record_checkpoints_and_threshold(g_run: Path) -> None:
    rec = RunRecord.load(g_run)
    assert rec["status"] == "done" and rec["kind"] == "detector" and rec["seed"] == 0
    assert rec["arch"] == "resnet10t_df" and len(rec["history"]) == 2
    assert {"torch", "timm", "python"} <= set(rec["versions"])
    assert 0.0 <= rec["thresholds"]["tau_fake"] <= 1.0
    assert {"val", "test"} <= set(rec["metrics"]) and rec["metrics"]["val"]["n"] == 8
    assert rec["data"]["train"] == {"real": 12, "fake": 12, "identities": 6}
    last = load_checkpoint(g_run / "last.pt")
    assert last["state"]["epoch"] == 2 and "optimizer" in last and "scheduler" in last
    g, _ = load_trained(g_run)
    assert g(torch.rand(2, 3, SIDE, SIDE)).shape == (2, 2)


@pytest.fixture(scope="module")
def g_resumed(work: Path, g_run: Path) -> Path:
    """A copy of the 2-epoch run resumed to 3 epochs (also the 'second detector' below)."""
    run = work / "g_resume"
    run.mkdir()
    for name in ("last.pt", "best.pt", "record.json"):
        (run / name).write_bytes((g_run / name).read_bytes())
    train_detector(work / "data", run, epochs=3, batch_size=8, lr=3e-3, patience=5,
                   device="cpu", seed=0, resume=True)
    return run


def test_detector_resume_continues_from_last_epoch(g_resumed: Path) -> None:
    rec = RunRecord.load(g_resumed)
    assert rec["status"] == "done"
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]  # only epoch 3 was trained
    assert load_checkpoint(g_resumed / "last.pt")["state"]["epoch"] == 3


def test_augment_keeps_range_and_shape() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, SIDE, SIDE)
    aug = Augment(p_jitter=1.0, p_blur=1.0, p_jpeg=1.0, p_flip=1.0)
    y = aug(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_threshold_maximises_balanced_accuracy() -> None:
    tau = choose_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    assert tau == pytest.approx(0.325)  # midway between the classes, not on a score
    # Separable: 0.5 when it separates, else the middle of the gap (a margin on both sides).
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.9, 0.95]) == 0.5
    assert choose_threshold([0, 0, 1, 1], [0.6, 0.7, 0.9, 0.99]) == pytest.approx(0.8)
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5  # one class: no information


def test_attack_set_pngs_fool_g_within_budget(att_root: Path, g_run: Path) -> None:
    rows = read_jsonl(att_root / "index.jsonl")
    meta = json.loads((att_root / "dataset.json").read_text())
    g, rec = load_trained(g_run)
    tau = rec["thresholds"]["tau_fake"]
    assert meta["attack"] == "pgd" and meta["tau_fake"] == pytest.approx(tau)
    assert {r["split"] for r in rows} <= {"train", "val", "test"} and rows
    for split, st in meta["stats"].items():
        assert st["attacked_kept"] == sum(r["label"] == 1 and r["split"] == split for r in rows)
        assert st["max_linf"] <= EPS + 1e-6
    attacked = [r for r in rows if r["label"] == 1]
    assert attacked and len(attacked) < len(rows)  # both classes present
    for r in rows:
        crop = cv2.cvtColor(cv2.imread(str(att_root / r["path"])), cv2.COLOR_BGR2RGB)
        assert crop.shape == (128, 128, 3)  # stored at g's input size
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        # Both classes are faces g calls real, judged on the stored (uint8) PNG.
        assert float(g.p_fake(x)[0]) < tau
    for r in attacked:
        assert r["linf"] <= EPS + 1e-6 and r["p_fake_before"] >= tau > r["p_fake_after"]


def test_adversarial_run_is_loadable(d_run: Path, att_root: Path) -> None:
    rec = RunRecord.load(d_run)
    assert rec["status"] == "done" and rec["xai"] == "saliency" and rec["mode"] == "finetune"
    assert rec["backbone_init"] == "detector:resnet10t_df"
    assert 0.0 <= rec["thresholds"]["tau_attacked"] <= 1.0
    assert rec["map_cache"]["computed"] > 0
    d, _ = load_trained(d_run)
    x = torch.rand(3, 3, 128, 128)
    assert d(x, x).shape == (3, 2)


def test_frozen_mode_trains_the_head_only(work: Path, att_root: Path, g_run: Path) -> None:
    run = work / "d_frozen"
    train_adversarial(att_root, run, g_run, mode="frozen", epochs=1, batch_size=8,
                      device="cpu")
    d, rec = load_trained(run)
    g, _ = load_trained(g_run)
    assert rec["arch_kwargs"] == {"freeze_backbone": True}
    # The backbone still equals g's (its init): frozen means untouched, BatchNorm included.
    g_state = g.net.state_dict()
    for k, v in d.net.backbone.state_dict().items():
        assert torch.equal(v, g_state[k]), k


def test_evaluate_writes_report_sections(
    work: Path, g_run: Path, d_run: Path, g_resumed: Path
) -> None:
    out = work / "report"
    # The resumed detector run stands in for a second detector (Table 8's transfer).
    rep = evaluate(work / "data", g_run, [d_run], out_dir=out, attack_overrides=TINY_ATTACKS,
                   transfer_detector_run=g_resumed, limit=4, limit_real=4,
                   batch_size=8, timing_batch=2, timing_repeats=1, device="cpu")
    md = (out / "report.md").read_text()
    for heading in ("## Targets", "## (a)", "## (b)", "## (c) ROC", "## (d) Transfer",
                    "## (e) Adaptive", "## (f) Computational overhead", "## (g) End to end"):
        assert heading in md
    assert data_transfer_ok(out)
    assert (out / "roc_detector.png").stat().st_size > 1000
    data = json.loads((out / "report.json").read_text())
    assert set(data["detector"]["attacked"]) == {"pgd", "fgsm", "apgd", "nes", "square"}
    rob = data["detector"]["clean"]["robustness"]
    assert set(rob["rows"]) == {"as stored", "JPEG q90", "JPEG q75", "soft x0.5"}
    assert rob["rows"]["as stored"]["auc"] == pytest.approx(data["detector"]["clean"]["auc"])
    assert "Robustness: the same crops" in md
    assert {"pgd", "pgd_b"} <= set(data["adversarial"]["saliency/finetune"])
    assert [t["name"] for t in data["targets"]][0].startswith("g AUC")
    assert all(isinstance(t["pass"], bool) for t in rep["targets"])
    methods = ("saliency", "guided_backprop", "input_x_gradient", "integrated_gradients")
    assert set(data["overhead"]["rows"]) == {"g", *(f"g+{m}" for m in methods),
                                             *(f"g+{m}+d" for m in methods)}
    assert data["adaptive"]["status"] == "ok"
    assert set(data["adaptive"]["rows"]) == {"adaptive_eq3/pgd", "adaptive_eq3/fgsm",
                                             "adaptive_eq4/pgd", "adaptive_eq4/fgsm"}
    assert data["budgets"]["square"]["max_queries"] == 10
    videos = data["videos"]
    assert videos["status"] == "ok" and len(videos["videos"]) == 2
    real, fake = videos["videos"]
    for row in (real, fake):  # MTCNN found the face in every sampled frame of the clip
        assert row["frames"]["no_face"] == 0 and sum(row["frames"].values()) == 4
    # Same bytes, same verdict; it is right for exactly one of the two labels.
    assert real["verdict"] == fake["verdict"] and real["correct"] != fake["correct"]
    assert videos["accuracy"] == {"splits": ["test", "val"], "n": 2, "all": 0.5,
                                  "real": float(real["correct"]), "fake": float(fake["correct"])}


def data_transfer_ok(out: Path) -> bool:
    tr = json.loads((out / "report.json").read_text())["transfer"]
    return tr["status"] == "ok" and set(tr["cells"]) == {"saliency/finetune"}


@pytest.fixture(scope="module")
def published(work: Path, g_run: Path, d_run: Path) -> tuple[Path, dict]:
    models = work / "models"
    return models, publish(g_run, d_run, models, version="test-1")


def test_publish_serves_through_store_and_analyzer(
    published: tuple[Path, dict], g_run: Path, d_run: Path
) -> None:
    models, out = published
    manifest = load_manifest(models)
    g_name, d_name = out["detector"]["name"], out["adversarial"]["name"]
    assert (manifest.default.detector, manifest.default.adversarial) == (g_name, d_name)
    g_entry, d_entry = manifest.get(g_name), manifest.get(d_name)
    assert g_entry.trained and d_entry.trained and g_entry.onnx and d_entry.onnx
    assert g_entry.onnx.opset == 17 and (models / d_entry.onnx.file).is_file()
    g_rec = RunRecord.load(g_run)
    assert g_entry.threshold == pytest.approx(g_rec["thresholds"]["tau_fake"])
    assert g_entry.training["command"] and g_entry.training["data"]["train"]["fake"] == 12
    assert d_entry.training["xai_method"] == "saliency" and d_entry.metrics["val"]["n"] > 0
    bundle = load_bundle(models)
    analyzer = Analyzer(bundle, torch.device("cpu"), bundle.thresholds())
    crops = [(np.random.default_rng(i).random((SIDE, SIDE, 3)) * 255).astype(np.uint8)
             for i in range(3)]
    scores = analyzer.score_crops(crops)
    assert len(scores) == 3 and all(0.0 <= s.p_fake <= 1.0 for s in scores)
    assert analyzer.trained
    # Publishing again under the same names replaces the entries, never duplicates them.
    publish(g_run, d_run, models, version="test-2", onnx=False)
    again = load_manifest(models)
    assert len(again.models) == 2 and again.get(g_name).version == "test-2"


def test_analyzer_accepts_explicit_thresholds(published: tuple[Path, dict]) -> None:
    bundle = load_bundle(published[0])
    analyzer = Analyzer(bundle, torch.device("cpu"), Thresholds(tau_fake=1.0, tau_attacked=0.0))
    crops = [np.full((SIDE, SIDE, 3), 120, np.uint8)] * 2
    scores = analyzer.score_crops(crops)
    # tau_fake = 1 → every face is real-called → XAI + d run and everything is "attacked".
    assert all(s.p_attacked is not None and s.verdict.value == "attacked" for s in scores)


def test_train_all_runs_every_stage_and_resumes(work: Path, tmp_path: Path) -> None:
    from app.training.pipeline import train_all

    # g learns the tiny set's stored fakes (a bright ring) directly: one epoch of the preset's
    # online self-blends leaves it calling every face fake, so no attack set could be built.
    # Online SBI and the mask head have their own tests (test_data.py).
    tiny_g = {"epochs": 2, "batch_size": 8, "online_sbi": False, "mask_weight": 0.0,
              "warmup_epochs": 0}
    tiny = {
        "detector": tiny_g,
        "transfer_detector": tiny_g,  # the preset's arch (regnetx002_df), tiny budget
        # The paper's single-PGD set: the mix, benign copies, section (h) and LOFO have their
        # own tests (test_robust_d.py); here they would only multiply the pipeline's runtime.
        "attack": {"limit": 6, "limit_real": 6, "batch_size": 8, "overrides": {"iters": 5},
                   "train_attacks": None, "eps_grid": None, "benign": 0},
        "adversarial": {"epochs": 1, "batch_size": 8},
        "evaluate": {"limit": 3, "limit_real": 3, "batch_size": 8, "timing_batch": 2,
                     "timing_repeats": 1, "attack_overrides": TINY_ATTACKS, "robust": False},
    }
    seen: list[str] = []
    kw = {"preset": "demo", "out_dir": tmp_path / "run", "models_dir": tmp_path / "models",
          "data_root": work / "data", "report_dir": tmp_path / "report", "device": "cpu",
          "overrides": tiny, "progress": lambda stage, done, total: seen.append(stage)}
    summary = train_all(**kw)
    assert [Path(p).name for p in summary["adversarial_runs"]] == [
        "saliency-finetune", "saliency-frozen"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "tested on attacks against regnetx002_df" in md and len(summary["targets"]) == 4
    transfer = json.loads((tmp_path / "report" / "report.json").read_text())["transfer"]
    assert transfer["status"] == "ok" and transfer["target_detector"] == "regnetx002_df"
    assert summary["published"]["adversarial"].endswith("saliency-finetune")
    assert load_manifest(tmp_path / "models").default.detector == summary["published"]["detector"]
    assert any(s.startswith("detector epoch") for s in seen) and "attack pgd" in seen
    timings = RunRecord.load(tmp_path / "run")["timings_s"]
    assert {"detector", "detector_transfer", "attack", "evaluate", "publish"} <= set(timings)
    # Re-running resumes: every finished stage is skipped, nothing is trained again.
    seen.clear()
    train_all(**kw, do_publish=False)
    assert not any(s.startswith(("detector epoch", "attack", "adversarial")) for s in seen)
    # A retrained g makes everything downstream of it stale: redone, g itself is not.
    g_rec = RunRecord.load(tmp_path / "run" / "detector")
    g_rec.update(finished="2000-01-01T00:00:00+00:00")
    seen.clear()
    train_all(**kw, do_publish=False)
    assert not any(s.startswith("detector epoch") for s in seen)
    assert "attack pgd" in seen and any(s.startswith("adversarial") for s in seen)
    # lineage.json is written only when a stage runs: the report was made again, from this g.
    lineage = json.loads((tmp_path / "report" / "lineage.json").read_text())
    assert lineage[str(tmp_path / "run" / "detector")] == "2000-01-01T00:00:00+00:00"
    assert RunRecord.load(tmp_path / "report")["status"] == "done"


def test_train_all_refuses_full_preset_without_data(tmp_path: Path) -> None:
    from app.training.pipeline import preset_config, train_all

    with pytest.raises(ValueError, match="needs data_root"):
        train_all("full", out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    cfg = preset_config("full")
    assert cfg["detector"]["arch"] == "xception"
    assert cfg["transfer_detector"]["arch"] == "efficientnet_b4_st"
    assert cfg["adversarial"]["arch"] == "detect_resnet50" and len(cfg["adversarial"]["xai"]) == 4
    with pytest.raises(ValueError, match="cannot override"):
        preset_config("demo", {"nope": {}})
