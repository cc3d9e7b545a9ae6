"""d's attack-diverse recipe: mixed attack sets, benign corruptions, FAR threshold, LOFO.

Runs the real small models on the tiny synthetic crop dataset of test_train.py; budgets are
tiny, so what is checked is the recipe's invariants, not detection quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.training.attack_mix import family_of, jobs_for, parse_names
from app.training.attack_set import attack_set, read_jsonl
from app.training.benign import FAMILIES, NAMED, random_corruption
from app.training.lofo import families_in, family_rate, lofo
from app.training.robust_eval import (
    EvalJob,
    eval_jobs,
    family_summary,
    robust_markdown,
    robust_section,
    robust_targets,
    target_for,
)
from app.training.train_adversarial import train_adversarial
from app.training.train_detector import train_detector
from app.training.upload_path import upload_copy
from tests.training.test_train import build_tiny_dataset

MIX = ["pgd", "fgsm"]
OVERRIDES = {"pgd": {"iters": 10}}


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    build_tiny_dataset(root / "data", identities=12, per=2)
    train_detector(root / "data", root / "g", epochs=2, batch_size=8, lr=3e-3, patience=5,
                   device="cpu", seed=0)
    return root


@pytest.fixture(scope="module")
def mixed(work: Path) -> Path:
    out = work / "att"
    attack_set(work / "data", work / "g", out, batch_size=8, device="cpu", seed=0,
               train_attacks=MIX, eps_grid=[8, 16], benign=2, upload_copies=1,
               overrides=OVERRIDES)
    return out


@pytest.fixture(scope="module")
def d_far(work: Path, mixed: Path) -> Path:
    train_adversarial(mixed, work / "d_far", work / "g", epochs=1, batch_size=8,
                      device="cpu", tau_far=0.1)
    return work / "d_far"


def _face(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 220, 64)[None, :, None] * np.ones((64, 64, 3))
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted({**FAMILIES, **NAMED}))
def test_each_benign_corruption_changes_the_crop_and_stays_uint8(name: str) -> None:
    fn = {**FAMILIES, **NAMED}[name]
    img = _face()
    out = fn(img, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() > 0  # not an identity


def test_random_corruption_is_reproducible_and_chains_named_families() -> None:
    a, names_a = random_corruption(_face(), np.random.default_rng(3))
    b, names_b = random_corruption(_face(), np.random.default_rng(3))
    assert names_a == names_b and np.array_equal(a, b)
    assert set(names_a.split("+")) <= set(FAMILIES)


def test_jobs_cover_the_grid_and_keep_the_paper_mode() -> None:
    jobs = jobs_for(["pgd", "square"], [4, 16])
    assert [j.label for j in jobs] == ["pgd@4", "pgd@16", "square@4", "square@16"]
    assert jobs[0].overrides["eps"] == pytest.approx(4 / 255)
    assert jobs[2].overrides["max_queries"] == 1000  # training-time budget cut
    paper = jobs_for(["pgd"], None)
    assert len(paper) == 1 and paper[0].label == "pgd" and paper[0].overrides == {}
    assert parse_names("mix")[0] == "pgd" and parse_names("pgd, square") == ["pgd", "square"]
    assert family_of("pgd_rs@8") == "pgd" and family_of("benign:jpeg") == "benign:jpeg"
    with pytest.raises(KeyError, match="unknown attack"):
        jobs_for(["nope"])


def test_mixed_set_labels_rows_by_job_and_benign_never_attacked(mixed: Path) -> None:
    rows = read_jsonl(mixed / "index.jsonl")
    attacked = [r for r in rows if r["label"] == 1 and "+" not in r["attack"]]
    benign = [r for r in rows if str(r["attack"]).startswith("benign:")]
    assert attacked and benign
    assert {r["attack"] for r in attacked} <= {"pgd@8", "pgd@16", "fgsm@8", "fgsm@16"}
    assert all(r["label"] == 0 and r["p_fake_after"] < 1 for r in benign)
    for r in attacked:  # each respects its own budget, after uint8 rounding
        eps = float(r["attack"].split("@")[1]) / 255
        assert r["linf"] <= eps + 1e-6
    meta = json.loads((mixed / "dataset.json").read_text())
    assert meta["attack"] == "mix" and len(meta["jobs"]) == 4 and meta["benign_per_clean"] == 2
    assert meta["upload_copies"] == 1
    assert set(meta["stats"]["train"]["jobs"]) <= {j["label"] for j in meta["jobs"]}


def test_upload_copies_are_attacks_that_still_fool_g_after_jpeg_or_rescale(mixed: Path) -> None:
    rows = read_jsonl(mixed / "index.jsonl")
    tau = json.loads((mixed / "dataset.json").read_text())["tau_fake"]
    kept = {(r["split"], r["orig_path"]): r for r in rows
            if r["label"] == 1 and "+" not in r["attack"]}
    copies = [r for r in rows if r["label"] == 1 and "+" in r["attack"]]
    assert copies, "no upload copy survived: the test set-up no longer exercises them"
    for r in copies:
        job, how = r["attack"].split("+", 1)
        assert (r["split"], r["orig_path"]) in kept  # a copy of a kept attack, same split
        assert kept[(r["split"], r["orig_path"])]["attack"] == job
        assert family_of(r["attack"]) == family_of(job) and how.startswith(("jpeg", "rescale"))
        assert r["p_fake_after"] < tau  # still an attack that works
        assert r["path"] != kept[(r["split"], r["orig_path"])]["path"]


def test_upload_copy_is_reproducible_uint8_and_changes_the_crop() -> None:
    names = set()
    for seed in range(12):
        a, na = upload_copy(_face(), np.random.default_rng(seed))
        b, nb = upload_copy(_face(), np.random.default_rng(seed))
        assert na == nb and np.array_equal(a, b)
        assert a.dtype == np.uint8 and a.shape == _face().shape
        assert np.abs(a.astype(int) - _face()).max() > 0
        names.add(na.split("+")[0].rstrip("0123456789."))
    assert names == {"jpeg", "rescale"}  # both transforms are drawn


def test_tau_far_holds_the_val_false_alarm_rate_and_rates_are_per_attack(d_far: Path) -> None:
    rec = json.loads((d_far / "record.json").read_text())
    assert rec["thresholds"]["rule"] == "far<=0.1"
    val = rec["metrics"]["val"]
    assert 1 - val["tnr"] <= 0.1 + 1e-9
    by = rec["metrics"]["test_by_attack"]
    assert "clean" in by and all(0 <= v["flagged"] <= 1 for v in by.values())


def test_lofo_retrains_without_each_family_and_tests_on_it(
    work: Path, mixed: Path, d_far: Path
) -> None:
    fams = families_in(mixed)
    assert fams and set(fams) <= set(MIX)
    out = lofo(mixed, work / "g", work / "lofo", full_run=d_far, epochs=1,
               batch_size=8, device="cpu")
    assert [r["family"] for r in out["rows"]] == fams
    rows = read_jsonl(mixed / "index.jsonl")
    for fam in fams:
        rec = json.loads((work / "lofo" / f"without_{fam}" / "record.json").read_text())
        assert rec["data"]["train"]["attacked"] == sum(
            1 for r in rows if r["split"] == "train" and r["label"] == 1
            and family_of(r["attack"]) != fam)
        n, _ = family_rate(rec["metrics"]["test_by_attack"], fam)
        assert n == sum(1 for r in rows if r["split"] == "test" and r["label"] == 1
                        and family_of(r["attack"]) == fam)
    assert "Leave-one-family-out" in (work / "lofo" / "lofo.md").read_text()


def test_eval_grid_targets_and_worst_cell_rule() -> None:
    jobs = {j.label: j for j in eval_jobs()}
    assert {"pgd_rs@16", "mifgsm@4", "eot_pgd@8", "square@16 q5000", "nes@16 q500"} <= set(jobs)
    assert target_for(jobs["pgd@16"]) == 0.95 and target_for(jobs["pgd@4"]) == 0.85
    assert target_for(jobs["square@16 q500"]) == 0.90 and target_for(jobs["pgd@2"]) == 0.0
    rows = [{"attack": "pgd@16", "family": "pgd", "flagged": 0.99, "target": 0.95},
            {"attack": "pgd_rs@8", "family": "pgd", "flagged": 0.5, "target": 0.95},
            {"attack": "square@16 q500", "family": "square", "flagged": 0.93, "target": 0.9}]
    assert family_summary(rows) == {"pgd": 0.5, "square": 0.93}
    sec = {"d": "saliency/finetune", "tau_attacked": 0.4, "detection": [
        {**r, "attempted": 10, "fooled_g": 9, "mean_linf": 0.05, "mean_queries": None}
        for r in rows], "false_alarms": [
        {"corruption": "clean", "n": 20, "g_called_fake": 0, "false_alarm": 0.0, "target": .03},
        {"corruption": "jpeg q40", "n": 18, "g_called_fake": 2, "false_alarm": 0.1,
         "target": 0.05}], "independent": {"skipped": "absent"}}
    targets = {t["name"]: t for t in robust_targets(sec)}
    worst = targets["d flags every family at 8–16/255 (worst cell)"]
    assert worst["value"] == 0.5 and not worst["pass"] and "pgd_rs@8" in worst["detail"]
    assert targets["d false alarms, clean held-out reals"]["pass"]
    assert not targets["d false alarms, worst benign corruption"]["pass"]
    md = "\n".join(robust_markdown(sec))
    assert "pgd_rs@8" in md and "MISS" in md and "not run" in md


def test_robust_section_on_held_out_faces_with_both_libraries(work: Path, d_far: Path) -> None:
    from app.training.common import load_trained
    from app.training.data import read_index
    from app.training.eval_suite import build_suite, load_d_models

    g, rec = load_trained(work / "g")
    tau = float(rec["thresholds"]["tau_fake"])
    recs = [r for r in read_index(work / "data") if r["split"] == "test"]
    suite = build_suite(g, tau, work / "data", [r for r in recs if r["label"] == 1],
                        [r for r in recs if r["label"] == 0], 8)
    (d,) = load_d_models([d_far], torch.device("cpu"))
    jobs = [EvalJob("pgd@16", "pgd", {"eps": 16 / 255, "iters": 5}, 16),
            EvalJob("square@16 q20", "square", {"eps": 16 / 255, "max_queries": 20})]
    sec = robust_section(suite, d, jobs, 8, 0, lambda *a: None)
    assert [r["attack"] for r in sec["detection"]] == ["pgd@16", "square@16 q20"]
    for r in sec["detection"]:
        assert r["fooled_g"] <= r["attempted"] == len(suite.caught)
        assert r["flagged"] is None or 0 <= r["flagged"] <= 1
    names = [r["corruption"] for r in sec["false_alarms"]]
    assert names[0] == "clean" and set(names[1:]) == set(NAMED)
    assert all(r["n"] + r["g_called_fake"] == len(suite.clean_x())
               for r in sec["false_alarms"][1:])
    ind = sec["independent"]
    assert [r["attack"] for r in ind["rows"]] == ["ta_pgd", "ta_mifgsm", "ta_apgd", "ta_square"]
    assert all(r["fooled_g"] <= r["attempted"] for r in ind["rows"])


def test_robust_report_writes_section_h_and_its_targets(work: Path, d_far: Path) -> None:
    from app.training.robust_report import robust_report

    jobs = [EvalJob("pgd@16", "pgd", {"eps": 16 / 255, "iters": 5}, 16)]
    out = work / "robust-report"
    rep = robust_report(work / "data", work / "g", d_far, out, limit_fake=8, limit_real=8,
                        jobs=jobs, batch_size=8, device="cpu")
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    assert data["targets"] == json.loads(json.dumps(rep["targets"]))
    assert [t["name"] for t in data["targets"]][-1].startswith("leave-one-family-out")
    assert data["robust"]["setup"]["test_fakes_selected"] <= 8
    assert "## Targets" in md and "### (h.a) detection per attack" in md and "pgd@16" in md
