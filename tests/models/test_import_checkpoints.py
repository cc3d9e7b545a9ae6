"""``dfshield models import``: published checkpoint layouts → model store, with parity.

Each source layout is rebuilt here with random weights and saved as the originals were:
FaceForensics++'s Xception as a whole pickled ``network.models.TransferModel`` (its classes
live in a throw-away package named ``network``, so the pickle names the published module
paths), icpr2020dfdc's EfficientNetB4ST as an ``efficientnet_pytorch`` state dict. The
imported models must give the source's logits on real face crops.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from efficientnet_pytorch import EfficientNet
from torch import nn
from typer.testing import CliRunner

from app.cli import ImportFormatName, app
from app.models.importers import FORMATS, CheckpointImportError, import_checkpoint
from app.models.importers.parity import BUNDLED_PORTRAITS, face_crops
from app.models.importers.safe_unpickle import ForbiddenGlobal, load_restricted
from app.models.placeholder import write_placeholders
from app.models.registry import create_model
from app.models.same_padding import pin_same_padding
from app.models.store import load_manifest, load_model
from app.training.attack_set import _resolve_detector
from app.training.common import load_trained

ATOL = 1e-5
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# FaceForensics++'s classification/network/{xception,models}.py layout: class, attribute and
# module names as published (the pickle stores them), Cadene's Xception forward.
NETWORK_XCEPTION = '''
import torch.nn as nn
import torch.nn.functional as F


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size=1, stride=1, padding=0, dilation=1, bias=False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel_size, stride, padding, dilation, groups=cin,
                               bias=bias)
        self.pointwise = nn.Conv2d(cin, cout, 1, 1, 0, 1, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    def __init__(self, cin, cout, reps, strides=1, start_with_relu=True, grow_first=True):
        super().__init__()
        if cout != cin or strides != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        else:
            self.skip = None
        self.relu = nn.ReLU(inplace=True)
        rep, filters = [], cin
        if grow_first:
            rep += [self.relu, SeparableConv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)]
            filters = cout
        for _ in range(reps - 1):
            rep += [self.relu, SeparableConv2d(filters, filters, 3, 1, 1),
                    nn.BatchNorm2d(filters)]
        if not grow_first:
            rep += [self.relu, SeparableConv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)]
        if not start_with_relu:
            rep = rep[1:]
        else:
            rep[0] = nn.ReLU(inplace=False)
        if strides != 1:
            rep.append(nn.MaxPool2d(3, strides, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, inp):
        x = self.rep(inp)
        skip = self.skipbn(self.skip(inp)) if self.skip is not None else inp
        x += skip
        return x


class Xception(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv2d(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = self.relu(self.bn3(self.conv3(x)))
        return self.bn4(self.conv4(x))

    def logits(self, features):
        x = F.adaptive_avg_pool2d(self.relu(features), (1, 1))
        return self.last_linear(x.view(x.size(0), -1))

    def forward(self, x):
        return self.logits(self.features(x))


def xception(num_classes=1000):
    model = Xception(num_classes=num_classes)
    model.last_linear = model.fc  # as published: the head is renamed after construction
    del model.fc
    return model
'''
NETWORK_MODELS = '''
import torch.nn as nn

from network.xception import xception


class TransferModel(nn.Module):
    def __init__(self, modelchoice="xception", num_out_classes=2, dropout=0.0):
        super().__init__()
        self.modelchoice = modelchoice
        self.model = xception()
        n = self.model.last_linear.in_features
        if not dropout:
            self.model.last_linear = nn.Linear(n, num_out_classes)
        else:
            self.model.last_linear = nn.Sequential(nn.Dropout(p=dropout),
                                                   nn.Linear(n, num_out_classes))

    def forward(self, x):
        return self.model(x)
'''


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def crops299() -> torch.Tensor:
    return face_crops(BUNDLED_PORTRAITS, 299)


@pytest.fixture(scope="module")
def crops224() -> torch.Tensor:
    return face_crops(BUNDLED_PORTRAITS, 224)


def _realistic_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Random BN affines, then running stats of one train-mode pass: activations stay sane."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
        m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        m.momentum = None  # cumulative average: one pass sets the stats
    with torch.no_grad():
        model.train()(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


# ------------------------------------------------------------------------- FaceForensics++


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory: pytest.TempPathFactory, crops299: torch.Tensor) -> dict:
    """all_c23.p-style pickles (zip and legacy torch formats) + the source's logits."""
    root = tmp_path_factory.mktemp("ffpp")
    pkg = root / "src" / "network"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "xception.py").write_text(NETWORK_XCEPTION)
    (pkg / "models.py").write_text(NETWORK_MODELS)
    sys.path.insert(0, str(pkg.parent))
    try:
        from network.models import TransferModel  # the published module path

        torch.manual_seed(0)
        model = TransferModel("xception", num_out_classes=2, dropout=0.5)
        x = (torch.cat([crops299, crops299.flip(-1)]) - 0.5) / 0.5
        _realistic_bn(model, x)
        with torch.no_grad():
            logits = model((crops299 - 0.5) / 0.5)
        torch.save(model, root / "all_c23.p")
        torch.save(model, root / "all_c23_legacy.p", _use_new_zipfile_serialization=False)
    finally:
        sys.path.remove(str(pkg.parent))
        for mod in [m for m in sys.modules if m == "network" or m.startswith("network.")]:
            del sys.modules[mod]
    return {"zip": root / "all_c23.p", "legacy": root / "all_c23_legacy.p", "logits": logits}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A model store that already has a default pair (the placeholders)."""
    write_placeholders(tmp_path / "models")
    return tmp_path / "models"


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_ffpp_import_matches_source_logits(
    kind: str, ffpp: dict, crops299: torch.Tensor, store: Path
) -> None:
    report = import_checkpoint("ffpp-xception", ffpp[kind], "ffpp-xception-c23", store,
                               trust_pickle=True)
    assert "network" not in sys.modules  # the source package was never imported
    assert report.parity <= ATOL
    model = load_model(store, "ffpp-xception-c23")
    with torch.no_grad():
        ours = model(crops299)
    assert (ours - ffpp["logits"]).abs().max() <= ATOL
    assert ours.argmax(1).tolist() == ffpp["logits"].argmax(1).tolist()
    entry, manifest = report.entry, load_manifest(store)
    assert (entry.role, entry.architecture, entry.trained) == ("detector", "xception", True)
    assert entry.preprocess.input_size == 299 and entry.preprocess.mean == (0.5, 0.5, 0.5)
    assert entry.preprocess.class_names == ("real", "fake") and entry.threshold == 0.5
    assert entry.training["source_sha256"] in entry.description and "ffpp-xception" in (
        entry.description)
    assert entry.training["loaded_with"].startswith("restricted unpickler")
    assert manifest.default.detector == "placeholder-detector"  # not the default unasked


def test_ffpp_pickle_needs_trust_pickle(ffpp: dict, store: Path) -> None:
    with pytest.raises(CheckpointImportError) as err:
        import_checkpoint("ffpp-xception", ffpp["zip"], "x", store)
    assert err.value.code == "untrusted_pickle" and "--trust-pickle" in err.value.message


class _Evil:
    """Unpickling this runs ``os.system`` (or ``eval``): the classic pickle payload."""

    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return self.call, (self.arg,)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_forbidden_global_is_refused_and_never_runs(
    payload: str, legacy: bool, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    call, arg = ((os.system, f"touch {marker}") if payload == "os.system"
                 else (eval, f"open({str(marker)!r}, 'w')"))
    path = tmp_path / "evil.p"
    torch.save({"model": nn.Linear(2, 2), "x": _Evil(call, arg)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ForbiddenGlobal) as err:
        load_restricted(path, {})
    assert not marker.exists()
    name = {"os.system": ("posix.system", "os.system"), "builtins.eval": ("builtins.eval",)}
    assert err.value.global_name in name[payload]
    with pytest.raises(CheckpointImportError) as err2:
        import_checkpoint("ffpp-xception", path, "evil", tmp_path / "models", trust_pickle=True)
    assert err2.value.code == "forbidden_global" and err.value.global_name in err2.value.message
    assert not marker.exists() and not (tmp_path / "models").exists()


class _Plain:
    """Any class of the saver's own code: the pickle names it by module path."""


def test_unknown_user_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.p"
    torch.save({"model": _Plain()}, path)
    with pytest.raises(ForbiddenGlobal, match=r"test_import_checkpoints\._Plain"):
        load_restricted(path, {})


def test_cli_refusal_is_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "evil.p"
    torch.save(_Evil(os.system, f"touch {tmp_path / 'pwned'}"), path)
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "import", str(path), "--format",
         "ffpp-xception", "--name", "evil", "--trust-pickle", "--models-dir",
         str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error forbidden_global:")
    assert "system" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------- icpr2020dfdc


class _EfficientNetGen(nn.Module):
    """icpr2020dfdc's EfficientNetGen('efficientnet-b4'): efficientnet_pytorch + unused head."""

    def __init__(self) -> None:
        super().__init__()
        self.efficientnet = EfficientNet.from_name("efficientnet-b4")  # no download
        self.classifier = nn.Linear(self.efficientnet._conv_head.out_channels, 1)
        del self.efficientnet._fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.efficientnet.extract_features(x)
        return self.efficientnet._avg_pooling(x).flatten(start_dim=1)


class _EfficientNetB4ST(nn.Module):
    """icpr2020dfdc's EfficientNetB4ST (SiameseTuning, lastonly): features → BN1d → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.feat_ext = _EfficientNetGen()
        self.classifier = nn.Sequential(nn.BatchNorm1d(1792), nn.Linear(1792, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.feat_ext.features(x)
        return self.classifier(x)


@pytest.fixture(scope="module")
def icpr(tmp_path_factory: pytest.TempPathFactory, crops224: torch.Tensor) -> dict:
    root = tmp_path_factory.mktemp("icpr")
    torch.manual_seed(0)
    model = _EfficientNetB4ST()
    _realistic_bn(model, (torch.cat([crops224, crops224.flip(-1)]) - IMAGENET_MEAN)
                  / IMAGENET_STD)
    with torch.no_grad():
        z = model((crops224 - IMAGENET_MEAN) / IMAGENET_STD)[:, 0]
    plain = root / "EfficientNetB4ST_FFPP_bestval-ac3b.pth"
    wrapped = root / "EfficientNetB4ST_DFDC_bestval-c9f3.pth"
    torch.save(model.state_dict(), plain)
    # train_binclass.py's own checkpoints wrap the weights with optimiser state and counters.
    torch.save({"net": model.state_dict(), "opt": {"state": {}, "param_groups": []},
                "epoch": 3, "iteration": 1200, "val_loss": 0.3}, wrapped)
    return {"plain": plain, "wrapped": wrapped, "z": z, "state": model.state_dict()}


@pytest.mark.parametrize("kind", ["plain", "wrapped"])
def test_icpr_import_matches_source_logit(
    kind: str, icpr: dict, crops224: torch.Tensor, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    report = import_checkpoint("icpr-effb4st", icpr[kind], "icpr-effb4st-ffpp", store)
    assert report.parity <= ATOL
    model = load_model(store, "icpr-effb4st-ffpp")
    with torch.no_grad():
        logits = model(crops224)
    z = icpr["z"]
    assert (logits[:, 1] - z).abs().max() <= ATOL and (logits[:, 0] + z).abs().max() <= ATOL
    entry = report.entry
    assert entry.architecture == "efficientnet_b4_st_tf" and entry.preprocess.input_size == 224
    assert entry.training["loaded_with"] == "torch.load(weights_only=True)"
    # A fresh store has no default: the import still does not make itself one unasked.
    assert load_manifest(store).default.detector is None


def test_pinned_padding_is_what_makes_icpr_match(icpr: dict, crops224: torch.Tensor) -> None:
    """timm's tf_efficientnet_b4 pads for the actual 224 px input; efficientnet_pytorch pins
    its padding for 380 px. Without the pin the same weights give other logits."""
    from app.models.importers.icpr_effb4st import convert

    state = convert(icpr["state"])
    pinned = create_model("efficientnet_b4_st_tf")
    pinned.net.load_state_dict(state)
    dynamic = create_model("efficientnet_b4_st_tf")
    dynamic.net.features = timm.create_model("tf_efficientnet_b4", num_classes=0)
    dynamic.net.load_state_dict(state)
    with torch.no_grad():
        gap = (pinned.eval()(crops224) - dynamic.eval()(crops224)).abs().max()
        z = pinned(crops224)[:, 1]
    assert (z - icpr["z"]).abs().max() <= ATOL and gap > 1e-3
    assert pin_same_padding(timm.create_model("tf_efficientnet_b4", num_classes=0), 380)


def test_parity_failure_writes_nothing(
    icpr: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.models.importers import icpr_effb4st

    real = icpr_effb4st.source_logits
    monkeypatch.setattr(icpr_effb4st, "source_logits", lambda s, x: real(s, x) + 1e-3)
    with pytest.raises(CheckpointImportError) as err:
        import_checkpoint("icpr-effb4st", icpr["plain"], "icpr", tmp_path / "m")
    assert err.value.code == "parity_failed" and "0.001 > 0.0001" in err.value.message
    assert not (tmp_path / "m").exists()


def test_icpr_refuses_other_layouts(tmp_path: Path, ffpp: dict) -> None:
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), other)
    with pytest.raises(CheckpointImportError, match="not an icpr2020dfdc"):
        import_checkpoint("icpr-effb4st", other, "x", tmp_path / "m")
    with pytest.raises(CheckpointImportError) as err:  # a whole pickled model: not weights-only
        import_checkpoint("icpr-effb4st", ffpp["zip"], "x", tmp_path / "m")
    assert err.value.code == "bad_checkpoint" and "weights-only" in err.value.message


# ------------------------------------------------------------ imported g in the product


def test_cli_import_prints_parity_and_gradients_reach_input(
    icpr: dict, tmp_path: Path, crops224: torch.Tensor
) -> None:
    store = tmp_path / "models"
    res = CliRunner().invoke(app, ["models", "import", str(icpr["plain"]), "--format",
                                   "icpr-effb4st", "--name", "icpr", "--models-dir",
                                   str(store), "--set-default", "--onnx"])
    assert res.exit_code == 0, res.output
    assert "parity: max |Δlogit| = " in res.output and "default detector: this one" in res.output
    manifest = load_manifest(store)
    assert manifest.default.detector == "icpr"
    assert manifest.get("icpr").onnx is not None  # for DFSHIELD_BACKEND=onnx
    assert manifest.get("icpr").metrics["onnx_parity"]["ok"]
    model = load_model(store, "icpr")
    x = crops224[:1].clone().requires_grad_()
    model(x)[:, 0].sum().backward()  # XAI maps and attacks differentiate through g
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = CliRunner().invoke(app, ["models", "import", str(icpr["plain"]), "--format",
                                     "icpr-effb4st", "--name", "icpr", "--models-dir",
                                     str(store)])
    assert again.exit_code == 2 and "name_taken" in again.output


def test_imported_ffpp_gradients_reach_input(ffpp: dict, store: Path,
                                             crops299: torch.Tensor) -> None:
    report = import_checkpoint("ffpp-xception", ffpp["zip"], "ffpp", store, trust_pickle=True,
                               set_default=True)
    # The served d was trained on another g's maps: the import says so.
    assert report.is_default and "placeholder-adversarial" in (report.note or "")
    model = load_model(store, "ffpp")
    x = crops299[:1].clone().requires_grad_()
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _tiny_attack_set(root: Path, crops: torch.Tensor) -> None:
    """The attack-set format train_adversarial reads: clean / attacked PNGs per split."""
    from app.training.common import to_uint8, write_png

    rows = []
    for split in ("train", "val"):
        for label, kind in ((0, "clean"), (1, "attacked")):
            for i, crop in enumerate(crops):
                x = crop if label == 0 else (crop + 8 / 255 * torch.randn_like(crop)).clamp(0, 1)
                rel = f"{split}/{kind}/{i:06d}.png"
                write_png(root / rel, to_uint8(x))
                rows.append({"path": rel, "label": label, "split": split, "identity": f"id{i}"})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_adversarial_takes_an_imported_detector_by_name(
    icpr: dict, tmp_path: Path, crops224: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "models"
    import_checkpoint("icpr-effb4st", icpr["plain"], "icpr", store)
    monkeypatch.setenv("DFSHIELD_MODELS_DIR", str(store))
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        g, rec = load_trained(Path("icpr"))
        assert g.spec.name == "efficientnet_b4_st_tf" and rec["thresholds"]["tau_fake"] == 0.5
        assert _resolve_detector(Path("icpr"), torch.device("cpu"), None)[1] == 0.5
        _tiny_attack_set(tmp_path / "att", crops224[:2])
        res = CliRunner().invoke(app, ["train", "adversarial", str(tmp_path / "att"),
                                       str(tmp_path / "d"), "--detector", "icpr", "--epochs",
                                       "1", "--batch-size", "4", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        record = json.loads((tmp_path / "d" / "record.json").read_text())
        assert record["status"] == "done" and record["detector_arch"] == "efficientnet_b4_st_tf"
        from app.training.publish import publish

        out = publish(Path("icpr"), tmp_path / "d", models_dir=store, onnx=False)
        manifest = load_manifest(store)
        assert out["detector"]["name"] == "icpr" and len(manifest.models) == 2
        assert manifest.default.detector == "icpr"
        assert manifest.default.adversarial == out["adversarial"]["name"]
    finally:
        get_settings.cache_clear()
    missing = CliRunner().invoke(app, ["train", "adversarial", str(tmp_path / "att"),
                                       str(tmp_path / "d2"), "--detector", "no-such-model"])
    assert missing.exit_code == 2 and "neither a run dir nor a model" in missing.output


# ------------------------------------------------------------------------- guard rails


def test_cli_formats_match_the_importers() -> None:
    assert set(ImportFormatName.__args__) == set(FORMATS)


def test_serving_never_loads_the_unpickler() -> None:
    code = textwrap.dedent("""
        import sys
        import app.api.main, app.worker.main, app.pipeline.analyze, app.models.store
        bad = [m for m in sys.modules if m.startswith("app.models.importers")]
        print(",".join(bad))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip()
    assert out == ""


def test_restricted_module_rejects_plain_pickle_globals(tmp_path: Path) -> None:
    from app.models.importers.safe_unpickle import restricted_pickle_module

    mod = restricted_pickle_module({})
    assert mod.loads(pickle.dumps({"a": [1, 2.0, "x"]})) == {"a": [1, 2.0, "x"]}
    with pytest.raises(ForbiddenGlobal, match="subprocess.Popen"):
        mod.loads(pickle.dumps(subprocess.Popen, protocol=2))
