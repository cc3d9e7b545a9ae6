"""ONNX Runtime backend: g and d published with ONNX by the real publish code, served by the
Analyzer in ONNX Runtime, must score real face crops as torch does; bad stores are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console

from app.bench.pipeline import bench_pipeline, print_pipeline
from app.config import Settings, get_settings
from app.models.registry import create_model
from app.models.store import MANIFEST_NAME, ModelBundle, ModelStoreError, load_bundle
from app.pipeline.analyze import Analyzer, build_result
from app.pipeline.explain import Explainer, map_to_image
from app.runtime.onnx import CPU_EP, OnnxAdversarial, OnnxDetector, pick_provider
from app.schemas import MediaInfo, Thresholds
from app.training.common import BEST_NAME, RunRecord, save_checkpoint
from app.training.publish import publish

DATA = Path(__file__).resolve().parents[1] / "data"
PORTRAITS = ("biden.jpg", "grace_hopper.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")
SIZE = 128  # resnet10t_df's input size: the service feeds crops at g's input size
ATOL = 1e-4
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _portrait_crops(size: int) -> list[np.ndarray]:
    """Centre squares of the test portraits (and their mirror images), RGB uint8."""
    crops = []
    for name in PORTRAITS:
        bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        rgb = cv2.cvtColor(bgr[y:y + s, x:x + s], cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        crops += [rgb, np.ascontiguousarray(rgb[:, ::-1])]
    return crops


def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def _fit(name: str, inputs: tuple[torch.Tensor, ...], seed: int) -> torch.nn.Module:
    """A few Adam steps on alternating labels: scores spread out, BatchNorm stats move."""
    torch.manual_seed(seed)
    model = create_model(name).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = torch.arange(inputs[0].shape[0]) % 2
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(*inputs), labels).backward()
        opt.step()
    return model.eval()


def _run_dir(root: Path, model: torch.nn.Module, extra: dict) -> Path:
    """A training run directory as publish() reads it: record.json + best checkpoint."""
    run = root / extra["kind"]
    RunRecord(run, {"arch": model.spec.name, "status": "done", "metrics": {}, **extra}).save()
    save_checkpoint(run / BEST_NAME, {"model": model.net.state_dict()})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    return fitted_runs(tmp_path_factory.mktemp("runs"))


def fitted_runs(root: Path) -> tuple[Path, Path]:
    """A g and a d briefly fitted on the portraits, as training run folders under ``root``."""
    x = _to_tensor(_portrait_crops(SIZE))
    g = _fit("resnet10t_df", (x,), seed=1)
    # d fitted on g's real saliency maps, so that its scores on such maps spread out.
    d = _fit("detect_resnet10t", (x, Explainer(g).maps(x)), seed=2)
    g_run = _run_dir(root, g, {"kind": "detector", "thresholds": {"tau_fake": 0.5}})
    d_run = _run_dir(root, d, {"kind": "adversarial", "thresholds": {"tau_attacked": 0.5},
                               "detector_arch": "resnet10t_df", "xai": "saliency",
                               "mode": "finetune"})
    return g_run, d_run


@pytest.fixture(scope="module")
def store(runs: tuple[Path, Path], tmp_path_factory) -> Path:
    """g and d published with ONNX (exported + parity-checked by the real publish code)."""
    models = tmp_path_factory.mktemp("store") / "models"
    publish(*runs, models, version="onnx-test")
    return models


@pytest.fixture(scope="module")
def bundle(store: Path) -> ModelBundle:
    return load_bundle(store, CPU)


def _entry_raw(models: Path, role: str) -> dict:
    raw = json.loads((models / MANIFEST_NAME).read_text())
    return next(m for m in raw["models"] if m["role"] == role)


def _split_threshold(values: np.ndarray) -> float:
    """A threshold in the widest gap that leaves >= 1/3 of the values on each side, so scores
    that differ by ATOL cannot land on different sides of it."""
    v = np.sort(values)
    lo = max(1, len(v) // 3)
    k = max(range(lo, len(v) - lo + 1), key=lambda i: v[i] - v[i - 1])
    assert v[k] - v[k - 1] > 10 * ATOL, f"scores too close to split robustly: {v}"
    return float((v[k - 1] + v[k]) / 2)


def test_manifest_describes_the_graphs_the_wrappers_load(store: Path, bundle: ModelBundle):
    g_raw, d_raw = _entry_raw(store, "detector"), _entry_raw(store, "adversarial")
    assert g_raw["training"]["onnx_inputs"] == ["crop"]
    assert d_raw["training"]["onnx_inputs"] == ["crop", "xai_map"]
    g = OnnxDetector(store, bundle.detector_entry, CPU, threads=1)
    d = OnnxAdversarial(store, bundle.adversarial_entry, CPU, threads=1)
    assert (g.input_size, d.input_size) == (SIZE, g_raw["training"]["onnx_input_size"])
    assert d.input_names == ("crop", "xai_map") and g.provider == CPU_EP == pick_provider(CPU)
    assert g.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ModelStoreError, match="is a detector, not a adversarial"):
        OnnxAdversarial(store, bundle.detector_entry, CPU)


def test_onnx_scores_match_torch_on_portraits(store: Path, bundle: ModelBundle):
    x = _to_tensor(_portrait_crops(SIZE))
    onnx = Analyzer(bundle, CPU, bundle.thresholds(), backend="onnx", models_dir=store,
                    threads=1)
    maps = onnx.explainer("saliency").maps(x)  # XAI stays in torch, on the torch detector
    with torch.no_grad():
        pairs = [
            (onnx.g.p_fake(x), bundle.detector.p_fake(x)),
            (onnx.d.p_attacked(x, maps), bundle.adversarial.p_attacked(x, maps)),
            # Off-size crops: resized outside the graph exactly as the torch wrapper does.
            (onnx.g.p_fake(_to_tensor(_portrait_crops(150))),
             bundle.detector.p_fake(_to_tensor(_portrait_crops(150)))),
        ]
    for got, want in pairs:
        assert got.shape == want.shape == (len(x),)
        assert torch.allclose(got, want, atol=ATOL, rtol=0), (got - want).abs().max()
    assert onnx.g.p_fake(x[:0]).shape == (0,)


def test_analyzer_backends_agree_on_scores_and_verdicts(store: Path, bundle: ModelBundle):
    crops = _portrait_crops(SIZE)
    with torch.no_grad():
        p_fake = bundle.detector.p_fake(_to_tensor(crops)).numpy()
    tau_fake = _split_threshold(p_fake)
    real = [c for c, p in zip(crops, p_fake, strict=True) if p < tau_fake]
    probe = Analyzer(bundle, CPU, Thresholds(tau_fake=1.0, tau_attacked=0.5))
    tau_att = _split_threshold(np.array([s.p_attacked for s in probe.score_crops(real)]))
    th = Thresholds(tau_fake=tau_fake, tau_attacked=tau_att)

    ref = Analyzer(bundle, CPU, th).score_crops(crops)
    onnx = Analyzer(bundle, CPU, th, backend="onnx", models_dir=store, threads=1)
    got = onnx.score_crops(crops)
    assert {s.verdict.value for s in ref} == {"fake", "attacked", "real"}
    for a, b in zip(got, ref, strict=True):
        assert a.verdict == b.verdict and abs(a.p_fake - b.p_fake) <= ATOL
        assert (a.p_attacked is None) == (b.p_attacked is None)
        if b.p_attacked is not None:
            assert abs(a.p_attacked - b.p_attacked) <= ATOL
            # Saliency from g's gradient graph in ORT: uint8 maps at most one level apart.
            diff = np.abs(a.xai_map.astype(int) - b.xai_map.astype(int))
            assert diff.max() <= 1 and (diff == 0).mean() >= 0.99
    assert onnx.runtime == f"onnxruntime {CPU_EP}"
    result = build_result(MediaInfo(kind="image", format="png", width=SIZE, height=SIZE,
                                    frames_sampled=1), [], onnx,
                          "saliency", {}, [])
    assert result.device == f"cpu (onnxruntime {CPU_EP})"


def test_settings_select_the_backend(store: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DFSHIELD_BACKEND", "onnx")
    settings = Settings(_env_file=None, models_dir=store, device="cpu", torch_threads=1)
    assert settings.backend == "onnx"
    analyzer = Analyzer.from_settings(settings)
    assert analyzer.backend == "onnx" and isinstance(analyzer.g, OnnxDetector)
    assert isinstance(analyzer.d, OnnxAdversarial)
    with pytest.raises(ValueError, match="needs models_dir"):
        Analyzer(analyzer.bundle, CPU, analyzer.thresholds, backend="onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        Analyzer(analyzer.bundle, CPU, analyzer.thresholds, backend="tensorrt")  # type: ignore[arg-type]


def test_tampered_onnx_is_refused(store: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(store, models)
    path = models / _entry_raw(models, "adversarial")["onnx"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    bundle = load_bundle(models, CPU)  # safetensors are intact: torch still serves
    Analyzer(bundle, CPU, bundle.thresholds())
    with pytest.raises(ModelStoreError, match="sha256 mismatch for .*\\.onnx"):
        Analyzer(bundle, CPU, bundle.thresholds(), backend="onnx", models_dir=models)


def test_entry_without_onnx_gives_a_clear_error(runs: tuple[Path, Path], tmp_path: Path):
    models = tmp_path / "plain"
    publish(*runs, models, version="plain", onnx=False)
    bundle = load_bundle(models, CPU)
    assert bundle.detector_entry.onnx is None
    with pytest.raises(ModelStoreError, match="has no ONNX artifact.*DFSHIELD_BACKEND=torch"):
        Analyzer(bundle, CPU, bundle.thresholds(), backend="onnx", models_dir=models)


def test_bench_pipeline_reports_the_backend(store: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DFSHIELD_MODELS_DIR", str(store))
    monkeypatch.setenv("DFSHIELD_TORCH_THREADS", "1")
    get_settings.cache_clear()
    try:
        report = bench_pipeline(batch=2, repeats=1, methods=("saliency",), device="cpu",
                                warmup=0, backend="onnx")
    finally:
        get_settings.cache_clear()
    assert report.backend == f"onnxruntime {CPU_EP}"
    assert [r.stage for r in report.rows] == ["g", "g + saliency", "g + saliency + d"]
    console = Console(record=True, width=200)
    print_pipeline(report, console)
    text = " ".join(console.export_text().split())  # the title wraps to the table's width
    assert f"g and d in onnxruntime {CPU_EP}" in text


def test_fake_called_faces_get_a_map_of_the_fake_logit_and_no_d(bundle: ModelBundle):
    crops = _portrait_crops(SIZE)
    with torch.no_grad():
        p_fake = bundle.detector.p_fake(_to_tensor(crops)).numpy()
    th = Thresholds(tau_fake=_split_threshold(p_fake), tau_attacked=0.5)
    plain = Analyzer(bundle, CPU, th).score_crops(crops)
    explaining = Analyzer(bundle, CPU, th, explain_fake=True)
    shown = explaining.score_crops(crops)
    # The network the Analyzer serves (BatchNorm folded), so the maps match exactly.
    fake_maps = Explainer(explaining.detector, "saliency", target="fake").maps(
        _to_tensor(crops))
    assert {s.verdict.value for s in shown} >= {"fake"}
    for i, (a, b) in enumerate(zip(plain, shown, strict=True)):
        assert (a.verdict, a.p_fake, a.p_attacked) == (b.verdict, b.p_fake, b.p_attacked)
        if b.verdict.value == "fake":  # g called it fake: a map of why, and still no d
            assert a.xai_map is None and b.p_attacked is None and b.xai_target == "fake"
            assert np.array_equal(b.xai_map, map_to_image(fake_maps[i]))
        else:  # d's map, unchanged
            assert b.xai_target == a.xai_target == "real"
            assert np.array_equal(a.xai_map, b.xai_map)
