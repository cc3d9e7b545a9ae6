"""``dfshield train …``: the offline training entrypoint (separate from serving)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from app.cli_common import (
    DEFAULT_MEDIA,
    SeedOpt,
    console,
    progress_bar,
    stage_progress,
    user_errors,
)
from app.cli_faces import register_face_commands
from app.config import REPO_ROOT

train_app = typer.Typer(help="Offline training: data, detector, attacks, d, evaluation, publish.",
                        no_args_is_help=True)


def _print_summary(summary: dict[str, Any]) -> None:
    console.print_json(json.dumps(summary, default=str))


@train_app.command()
@user_errors
def prepare(
    source: Annotated[Path, typer.Argument(help="FF++ root, or a folder with real/ + fake/")],
    out: Annotated[Path, typer.Argument(help="crop dataset folder to write (resumable)")],
    layout: Annotated[Literal["auto", "ffpp", "folders"], typer.Option()] = "auto",
    frames_per_video: Annotated[int, typer.Option(min=1)] = 16,
    crop_size: Annotated[int, typer.Option(min=32)] = 224,
    compression: Annotated[str, typer.Option(help="FF++ compression folder")] = "c23",
    methods: Annotated[list[str] | None, typer.Option(help="FF++ methods (repeat)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="MTCNN device")] = "cpu",
    self_blends: Annotated[int, typer.Option(min=0, help="SBI fakes per real crop")] = 0,
) -> None:
    """Extract MTCNN 1.3x face crops into a crop dataset split by identity."""
    from app.training.data import add_self_blends
    from app.training.data import prepare as run_prepare

    with progress_bar("sources") as cb:
        summary = run_prepare(source, out, layout=layout, frames_per_video=frames_per_video,
                              seed=seed, crop_size=crop_size, compression=compression,
                              methods=methods, progress=cb, device=device)
    if self_blends:
        with progress_bar("self-blends") as cb:
            summary["self_blends"] = add_self_blends(out, per_real=self_blends, seed=seed,
                                                     progress=cb)
    _print_summary(summary)


@train_app.command("demo-data")
@user_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="demo corpus folder")] = Path("runs/demo-data"),
    media_dir: Annotated[Path, typer.Option(help="real media to draw faces from")] = DEFAULT_MEDIA,
    crop_size: Annotated[int, typer.Option(
        min=32, help="crop side in px; the bundled g was trained on 128 (demo preset)")] = 224,
    per_identity: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option()] = False,
) -> None:
    """Build the offline demo corpus: bundled real faces + self-blended / cross-identity fakes."""
    from app.training.demo import build_demo

    with progress_bar("demo corpus") as cb:
        summary = build_demo(out, media_dir, seed=seed, crop_size=crop_size,
                             per_identity=per_identity, overwrite=overwrite, progress=cb)
    _print_summary(summary)


DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
UploadCopiesOpt = Annotated[int, typer.Option(
    min=0, help="copies of each attacked crop through a random JPEG / rescale (the upload "
                "path) that join the attacked class while they still fool g")]
NativeShareOpt = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="share of each attack job's faces attacked at upload resolution "
                           "(1.2-2.2x g's input) through the service's shrink to g's input")]


@train_app.command()
@user_errors
def detector(
    data: Annotated[Path, typer.Argument(help="crop dataset (prepare / demo-data)")],
    run_dir: Annotated[Path, typer.Argument(help="where checkpoints and the record go")],
    arch: Annotated[str, typer.Option(help="registered detector")] = "resnet10t_df",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 1e-3,
    patience: Annotated[int, typer.Option(min=1, help="early-stopping epochs")] = 3,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    online_sbi: Annotated[bool, typer.Option(
        help="train on reals only, each paired with a fresh self-blended fake (SBI)")] = False,
    mask_weight: Annotated[float, typer.Option(
        min=0.0, help="with --online-sbi: weight of the blend-mask loss (0 = off)")] = 0.0,
    p_soften: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="with --online-sbi: share of pairs made from a softened real")
    ] = 0.0,
    val_jpeg: Annotated[int | None, typer.Option(
        min=1, max=100, help="also validate on val crops re-encoded at this JPEG quality")
    ] = None,
    backbone: Annotated[str | None, typer.Option(
        help="start from this pretrained backbone of --models-dir (e.g. "
             "dfshield-backbone-dlib_face_resnet with --arch faceresnet_df)")] = None,
    models_dir: Annotated[Path, typer.Option(help="model store holding --backbone")] =
        REPO_ROOT / "models",
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
) -> None:
    """Train g; best checkpoint by full-validation AUC, tau_fake chosen on validation."""
    from app.training.train_detector import train_detector

    with stage_progress("detector") as cb:
        record = train_detector(data, run_dir, arch=arch, epochs=epochs, batch_size=batch_size,
                                lr=lr, patience=patience, seed=seed, device=device,
                                online_sbi=online_sbi, mask_weight=mask_weight,
                                p_soften=p_soften, val_jpeg=val_jpeg, backbone=backbone,
                                models_dir=models_dir, resume=resume, progress=cb)
    _print_summary(record)


@train_app.command()
@user_errors
def attack(
    data: Annotated[Path, typer.Argument(help="crop dataset")],
    detector_run: Annotated[Path, typer.Argument(help="run dir (or checkpoint) of g")],
    out: Annotated[Path, typer.Argument(help="attacked crop set to write")],
    attack_name: Annotated[str, typer.Option("--attack", help="pgd|fgsm|apgd|nes|square")] = "pgd",
    train_attacks: Annotated[str | None, typer.Option(
        help="a mix instead of --attack: comma-separated attack names, or 'mix' for "
             "pgd,pgd_rs,apgd,mifgsm,fgsm,eot_pgd,ddn,square,nes")] = None,
    eps_grid: Annotated[str | None, typer.Option(
        help="L∞ budgets in /255 for the mix, e.g. 2,4,8,16 (default: each attack's own)")]
        = None,
    benign: Annotated[int, typer.Option(
        min=0, help="benign-corrupted copies of each clean crop in the clean class")] = 0,
    upload_copies: UploadCopiesOpt = 0,
    native_share: NativeShareOpt = 0.0,
    limit: Annotated[int | None, typer.Option(help="fake crops per split at most")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Attack the fake crops g gets right; keep those g now calls real, plus clean reals."""
    from app.training.attack_mix import parse_names
    from app.training.attack_set import attack_set

    grid = [float(e) for e in eps_grid.split(",")] if eps_grid else None
    with stage_progress(train_attacks or attack_name) as cb:
        summary = attack_set(data, detector_run, out, attack=attack_name, limit=limit,
                             batch_size=batch_size, seed=seed, device=device,
                             train_attacks=parse_names(train_attacks), eps_grid=grid,
                             benign=benign, upload_copies=upload_copies,
                             native_share=native_share, progress=cb)
    _print_summary(summary)


def _build_attack_root(
    root: Path, data: Path | None, g_run: Path, names: str, eps_grid: str | None, benign: int,
    seed: int, device: str, upload_copies: int = 0, native_share: float = 0.0,
) -> None:
    from app.training.attack_mix import parse_names
    from app.training.attack_set import INDEX_NAME, attack_set

    if (root / INDEX_NAME).is_file():
        raise typer.BadParameter(f"{root} already holds an attack set; drop --train-attacks "
                                 "to train on it, or choose a new ATTACK_ROOT")
    if data is None:
        raise typer.BadParameter("--train-attacks needs --data (the crop dataset to attack)")
    grid = [float(e) for e in eps_grid.split(",")] if eps_grid else None
    parsed = parse_names(names) or []
    mix = None if parsed == ["pgd"] and grid is None else parsed  # the paper's: one PGD
    with stage_progress(names) as cb:
        attack_set(data, g_run, root, train_attacks=mix,
                   eps_grid=grid, benign=benign, upload_copies=upload_copies,
                   native_share=native_share, seed=seed, device=device, progress=cb)


@train_app.command()
@user_errors
def adversarial(
    attack_root: Annotated[Path, typer.Argument(help="attacked crop set (train attack)")],
    run_dir: Annotated[Path, typer.Argument(help="where checkpoints and the record go")],
    detector_run: Annotated[Path, typer.Option("--detector", help="run dir of g")],
    arch: Annotated[str, typer.Option(help="registered adversarial detector")] = "detect_resnet10t",
    xai: Annotated[str, typer.Option(help="XAI method for the maps")] = "saliency",
    mode: Annotated[Literal["finetune", "frozen"], typer.Option()] = "finetune",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 1e-3,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    backbone_init: Annotated[str, typer.Option(
        help="d's backbone: auto (g's trunk when it fits) | g | none | backbone:NAME (a "
             "pretrained backbone of --models-dir) | a safetensors path")] = "auto",
    models_dir: Annotated[Path, typer.Option(help="model store for backbone:NAME")] =
        REPO_ROOT / "models",
    tau_far: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="tau_attacked for at most this false-alarm rate on val clean "
                               "(default: Youden's J)")] = None,
    exclude_family: Annotated[list[str] | None, typer.Option(
        help="leave this attack family out of train/val (repeatable)")] = None,
    train_attacks: Annotated[str | None, typer.Option(
        help="build ATTACK_ROOT first from --data with this mix ('pgd' = the paper's "
             "recipe, 'mix' = every family; see train attack)")] = None,
    data: Annotated[Path | None, typer.Option(help="crop dataset for --train-attacks")] = None,
    eps_grid: Annotated[str | None, typer.Option(help="with --train-attacks, /255")] = None,
    benign: Annotated[int, typer.Option(min=0, help="with --train-attacks")] = 0,
    upload_copies: UploadCopiesOpt = 0,
    native_share: NativeShareOpt = 0.0,
    resume: Annotated[bool, typer.Option()] = False,
) -> None:
    """Train d on (crop, XAI map): clean reals vs attacked fakes g calls real."""
    from app.training.train_adversarial import train_adversarial

    if train_attacks:
        _build_attack_root(attack_root, data, detector_run, train_attacks, eps_grid, benign,
                           seed, device, upload_copies, native_share)
    with stage_progress(f"d ({xai}, {mode})") as cb:
        record = train_adversarial(attack_root, run_dir, detector_run, arch=arch, xai=xai,
                                   mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                                   seed=seed, device=device, backbone_init=backbone_init,
                                   models_dir=models_dir, tau_far=tau_far,
                                   exclude_families=exclude_family or [], resume=resume,
                                   progress=cb)
    _print_summary(record)


@train_app.command()
@user_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="crop dataset (its test split is used)")],
    detector_run: Annotated[Path, typer.Argument(help="run dir of g")],
    adversarial_runs: Annotated[list[Path], typer.Argument(help="run dirs of d")],
    out_dir: Annotated[Path, typer.Option(help="report folder")] = Path("reports/latest"),
    transfer_detector: Annotated[Path | None, typer.Option(help="second g (Table 8)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="test crops per attack")] = 200,
    robust: Annotated[bool, typer.Option(
        help="section (h): d per attack x budget, benign false alarms, torchattacks")] = False,
    lofo: Annotated[Path | None, typer.Option(help="lofo.json of `train lofo` to include")]
        = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Paper-style tables (Markdown + JSON + ROC PNGs) under OUT_DIR."""
    from app.training.evaluate import evaluate as run_evaluate

    with stage_progress("evaluate") as cb:
        summary = run_evaluate(data, detector_run, adversarial_runs, out_dir=out_dir,
                               transfer_detector_run=transfer_detector, limit=limit, seed=seed,
                               device=device, robust=robust, lofo_json=lofo, progress=cb)
    _print_summary(summary)


@train_app.command("robust")
@user_errors
def robust_cmd(
    data: Annotated[Path, typer.Argument(help="crop dataset (its test split is used)")],
    detector_run: Annotated[Path, typer.Argument(help="run dir of g, or a store entry name")],
    d_run: Annotated[Path, typer.Argument(help="run dir of d")],
    out_dir: Annotated[Path, typer.Option(help="report folder")] = Path("reports/robust-d"),
    limit_fake: Annotated[int, typer.Option(min=1, help="test fakes drawn")] = 40,
    limit_real: Annotated[int, typer.Option(min=1, help="test reals drawn")] = 120,
    lofo: Annotated[Path | None, typer.Option(help="lofo.json of `train lofo` to include")]
        = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Section (h) alone: d per attack x budget, benign false alarms, torchattacks, LOFO."""
    from app.training.robust_report import robust_report

    with stage_progress("robust") as cb:
        report = robust_report(data, detector_run, d_run, out_dir, limit_fake, limit_real,
                               lofo, seed=seed, device=device, progress=cb)
    _print_summary({"report": str(out_dir / "report.md"), "targets": report["targets"]})


@train_app.command("lofo")
@user_errors
def lofo_cmd(
    attack_root: Annotated[Path, typer.Argument(help="a mixed attack set (train attack "
                                                     "--train-attacks mix)")],
    out_dir: Annotated[Path, typer.Argument(help="where the retrained d runs go")],
    detector_run: Annotated[Path, typer.Option("--detector", help="run dir of g")],
    family: Annotated[list[str] | None, typer.Option(help="only these families")] = None,
    full_run: Annotated[Path | None, typer.Option(
        help="an existing d trained on every family (else one is trained)")] = None,
    arch: Annotated[str, typer.Option(help="registered adversarial detector")] = "detect_resnet10t",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    tau_far: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = 0.03,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Leave-one-family-out: retrain d without each attack family, test it on that family."""
    from app.training.lofo import lofo

    with stage_progress("lofo") as cb:
        summary = lofo(attack_root, detector_run, out_dir, families=family, full_run=full_run,
                       progress=cb, arch=arch, epochs=epochs, batch_size=batch_size,
                       tau_far=tau_far, seed=seed, device=device)
    _print_summary(summary)


@train_app.command()
@user_errors
def publish(
    detector_run: Annotated[Path, typer.Argument(help="run dir of g")],
    adversarial_run: Annotated[Path, typer.Argument(help="run dir of d")],
    models_dir: Annotated[Path, typer.Option(help="model store")] = REPO_ROOT / "models",
    set_default: Annotated[bool, typer.Option(help="make them the served defaults")] = True,
    onnx: Annotated[bool, typer.Option(help="export ONNX with a parity check")] = True,
    report: Annotated[Path | None, typer.Option(help="evaluation report to cite")] = None,
) -> None:
    """Export safetensors + ONNX and add manifest entries (sha256, thresholds, metrics)."""
    from app.training.publish import publish as run_publish

    _print_summary(run_publish(detector_run, adversarial_run, models_dir=models_dir,
                               set_default=set_default, onnx=onnx, report=report))


@train_app.command("all")
@user_errors
def train_all_cmd(
    preset: Annotated[Literal["demo", "full"], typer.Option(help="demo: CPU corpus")] = "demo",
    out_dir: Annotated[Path | None, typer.Option(help="run folder (default runs/<time>)")] = None,
    source: Annotated[Path | None, typer.Option(help="dataset for the full preset")] = None,
    data: Annotated[Path | None, typer.Option(help="an already prepared crop dataset")] = None,
    models_dir: Annotated[Path, typer.Option(help="model store")] = REPO_ROOT / "models",
    report_dir: Annotated[Path | None, typer.Option(help="report folder")] = None,
    do_publish: Annotated[bool, typer.Option("--publish/--no-publish")] = True,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Data → g → PGD attack set → d → evaluation → publish, resumable stage by stage."""
    from app.training.pipeline import train_all

    with stage_progress(f"train all ({preset})") as cb:
        summary = train_all(preset=preset, out_dir=out_dir, models_dir=models_dir,
                            data_root=data, source=source, report_dir=report_dir, device=device,
                            seed=seed, do_publish=do_publish, progress=cb)
    _print_summary(summary)


register_face_commands(train_app)
