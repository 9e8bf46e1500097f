"""The eval runner, bench, report and CLI on real (small) data with an UNTRAINED projector.

These check the pipeline, never accuracy: the checkpoint is made by save_untrained.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evaluation import bench, datasets, runner
from pretrain.data.folders import Sample

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max")
HEADLINE = (*METRICS, "n_train", "n_test", "seconds")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    from pretrain.checkpoint import save_untrained

    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    return save_untrained(path, "mobilenet_v2", num_tokens=64)


@pytest.fixture(scope="module")
def bottle(datasets_dir) -> Path:
    path = datasets_dir / "mvtec_ad" / "bottle"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def lm(untrained):
    cfg = runner.EvalConfig(category="", checkpoint=str(untrained))
    return runner.load_model(cfg)


def test_parse_shots():
    assert runner.parse_shots("all") is None
    assert runner.parse_shots("4") == 4
    with pytest.raises(ValueError):
        runner.parse_shots("0")
    with pytest.raises(ValueError):
        runner.parse_shots("many")


def test_subsample_test_is_stratified_and_deterministic():
    samples = [Sample(Path(f"{i:03d}.png"), int(i % 4 == 0), "x") for i in range(100)]
    sub = datasets.subsample_test(samples, 20, seed=0)
    assert len(sub) == 20
    assert sum(s.label for s in sub) == 5  # 25 % defective, as in the full set
    assert sub == datasets.subsample_test(samples, 20, seed=0)
    assert datasets.subsample_test(samples, None) == samples


def test_elpv_view():
    pytest.importorskip("elpv_dataset")
    mono = datasets.load_elpv("elpv:mono")
    rows = [r for r in datasets.read_elpv_labels(datasets.elpv_data_dir()) if r[2] == "mono"]
    normal = sum(1 for r in rows if r[1] == 0.0)
    assert mono.name == "elpv/mono"
    assert len(mono.train_good) == round(0.2 * normal)
    assert len(mono.train_good) + len(mono.test) == len(rows)
    assert sum(s.label for s in mono.test) == sum(1 for r in rows if r[1] > 0)
    assert not set(mono.train_good) & {s.path for s in mono.test}
    assert not mono.has_masks
    assert datasets.load_category("elpv").name == "elpv/all"
    with pytest.raises(ValueError, match="cell type"):
        datasets.load_elpv("elpv:thin-film")


def test_leave_one_out_reference_residuals(lm, bottle):
    from pretrain.residual import ReferencePool, pool_residuals

    cat = datasets.load_category(bottle)
    cat.test = cat.test[:2]
    raw = runner.raw_features(lm, cat, 64, 3, show_progress=False)
    fs = runner.feature_set(lm, raw, "residual", 3, show_progress=False)
    assert fs.n_pool == 3 and fs.train[0].shape[0] == 3
    # image 1's residual is taken against images 0 and 2 only: never identically zero
    others = ReferencePool.from_features([torch.cat([f[:1], f[2:3]]) for f in raw.train])
    expected = pool_residuals([f[1:2] for f in raw.train], others)
    for got, exp in zip(fs.train, expected, strict=True):
        assert torch.allclose(got[1:2], exp)
        assert got[1].abs().sum() > 0


def test_eval_cli_json_report_and_refusal(untrained, bottle, tmp_path):
    from adqc.cli import build_app

    app = build_app()
    out = tmp_path / "out.json"
    args = [
        "eval",
        str(bottle),
        "--features",
        "adpretrain",
        "--checkpoint",
        str(untrained),
        "--detector",
        "patchcore",
        "--shots",
        "2",
        "--image-size",
        "96",
        "--max-test",
        "6",
        "--json",
        str(out),
        "--report",
        str(tmp_path / "report"),
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    for key in HEADLINE:
        assert key in doc
    assert doc["n_train"] == 2 and doc["n_test"] == 6
    assert 0.0 <= doc["image_auroc"] <= 1.0 and 0.0 <= doc["aupro"] <= 1.0
    assert doc["config"]["image_size"] == 96 and doc["config"]["shots"] == "2"
    assert doc["checkpoint"]["trained"] is False
    assert doc["detector"]["bank_size"] == doc["detector"]["patches_seen"] > 0
    # the installed package's version, never "unknown"
    assert doc["versions"]["adqc"] == importlib.metadata.version("adqc") != "unknown"
    assert doc["per_defect"] and set(doc["per_defect"]) <= {
        "broken_large",
        "broken_small",
        "contamination",
    }
    assert any("UNTRAINED" in n for n in doc["notes"])
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and 'src="http' not in page

    refused = CliRunner().invoke(
        app,
        ["eval", str(bottle), "--features", "raw", "--detector", "featurenorm", "--shots", "2"]
        + ["--json", str(tmp_path / "x.json")],
    )
    assert refused.exit_code == 2
    assert "FeatureNorm" in refused.output and not (tmp_path / "x.json").exists()


def test_bench_rows_and_markdown(untrained, bottle, tmp_path):
    doc = bench.run_accuracy(
        [str(bottle)],
        features=("raw", "adpretrain"),
        methods=("featurenorm", "padim"),
        shots=(2,),
        checkpoint=str(untrained),
        image_size=64,
        max_test=6,
        json_path=tmp_path / "bench.json",
        show_progress=False,
    )
    status = {(r["features"], r["method"]): r["status"] for r in doc["rows"]}
    assert status == {
        ("raw", "featurenorm"): "unsupported",
        ("raw", "padim"): "ok",
        ("adpretrain", "featurenorm"): "ok",
        ("adpretrain", "padim"): "ok",
    }
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == json.loads(
        json.dumps(runner._clean(doc["rows"]))
    )
    table = bench.markdown_table(doc)
    assert "### mvtec_ad/bottle" in table and "WARNING" in table
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written intro\n")
    bench.write_markdown(md, table, "bottle")
    bench.write_markdown(md, table.replace("padim", "PADIM"), "bottle")  # replaced, not added
    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written intro\n")
    assert text.count("adqc bench accuracy bottle: generated") == 1 and "PADIM" in text


def test_bench_reuse_copies_checkpoint_free_rows(untrained, bottle, tmp_path):
    common = dict(
        methods=("padim",),
        shots=(2,),
        checkpoint=str(untrained),
        image_size=64,
        max_test=6,
        show_progress=False,
    )
    first = bench.run_accuracy(
        [str(bottle)], features=("raw", "adpretrain"), json_path=tmp_path / "a.json", **common
    )
    # poison the earlier raw row: a copy must carry it over untouched, a recompute would not
    earlier = json.loads((tmp_path / "a.json").read_text())
    earlier["rows"][0]["image_auroc"] = 0.123
    (tmp_path / "a.json").write_text(json.dumps(earlier))
    second = bench.run_accuracy(
        [str(bottle)], features=("raw", "adpretrain"), reuse=tmp_path / "a.json", **common
    )
    rows = {r["features"]: r for r in second["rows"]}
    assert rows["raw"]["image_auroc"] == 0.123 and rows["raw"]["reused_from"].endswith("a.json")
    assert "reused_from" not in rows["adpretrain"]
    assert rows["adpretrain"]["image_auroc"] == first["rows"][1]["image_auroc"]
    with pytest.raises(ValueError, match="image_size 64 vs 96"):
        bench.run_accuracy(
            [str(bottle)],
            features=("raw",),
            reuse=tmp_path / "a.json",
            **common | {"image_size": 96},
        )


def test_metrics_on_constant_scores_are_not_collapsed():
    # every image scores the same: AUROC 0.5 exactly (ties), not a crash or NaN
    assert runner.M.auroc(np.zeros(4), [0, 1, 0, 1]) == 0.5


def test_markdown_drops_metrics_no_row_has():
    base = {"n_test_normal": 3, "n_test_defective": 2, "status": "ok", "shots": "2"}
    rows = [
        {**base, "category": "elpv/mono", "features": f, "method": "padim", "image_auroc": v}
        | {"pixel_auroc": None, "aupro": None}
        for f, v in (("raw", 0.5), ("adpretrain", 0.625))
    ]
    doc = {
        "command": "adqc bench accuracy --data elpv:mono",
        "config": {"features": ["raw", "adpretrain"], "backbone": "b", "image_size": 224}
        | {"pool_cap": 8, "cpus": 2},
        "rows": rows,
        "seconds": 1.0,
        "checkpoint": None,
    }
    table = bench.markdown_table(doc)
    assert "P-AUROC" not in table and "AUPRO" not in table
    assert "| padim | 2 | 0.500 | 0.625 | yes (+0.125) |" in table
    # a category without normal test images (DeepPCB) has no image AUROC: no comparison
    for r in rows:
        r.update(image_auroc=None, pixel_auroc=0.9)
    table = bench.markdown_table(doc)
    assert "| padim | 2 | 0.900 | 0.900 | n/a |" in table and "I-AUROC raw" not in table
