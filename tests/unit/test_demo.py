"""`adqc demo` as a line: one product per cell type, frames routed by type, quality per product
(small synthetic frames; the elpv end-to-end run is in inference/test_inference_cli).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from adqc.demo import (
    PRODUCTS_BY_TYPE,
    DemoError,
    Frame,
    _print_summary,
    camera,
    elpv_shots,
    line_quality,
    product_batches,
    route,
    scored_batches,
)
from inference.results import ScoreResult
from pretrain.preprocess import ImageLoadError

ROUTES: dict[str | None, str] = {"mono": "pv-mono", "poly": "pv-poly"}


def _frame(name: str, kind: str | None = None, probability: float | None = None) -> Frame:
    label = None if probability is None else int(probability > 0)
    return Frame(name, Path(f"/cells/{name}.png"), label, probability, kind)


def _result(product: str, score: float, threshold: float = 1.0) -> ScoreResult:
    return ScoreResult(
        product=product,
        score=score,
        threshold=threshold,
        is_defective=score > threshold,
        anomaly_map=np.zeros((8, 8), np.float32),
        regions=[],
        model_id="mobilenet_v2:1a2b3c4d5e6f",
        reference_version=1,
    )


def test_the_demo_products_are_one_per_elpv_cell_type():
    assert PRODUCTS_BY_TYPE == {"mono": "pv-mono", "poly": "pv-poly"}


def test_each_type_is_onboarded_from_its_first_functional_cells_by_file_name():
    frames = [
        _frame("c05", "poly", 0.0),
        _frame("c01", "mono", 1.0),  # defective: never a reference
        _frame("c02", "mono", 0.0),
        _frame("c04", "poly", 0.0),
        _frame("c03", "mono", 0.0),
        _frame("c06", "mono", 0.0),
        _frame("c07", "poly", 1 / 3),
    ]
    shots = elpv_shots(frames, per_type=2)
    assert {kind: [f.frame_id for f in cells] for kind, cells in shots.items()} == {
        "mono": ["c02", "c03"],
        "poly": ["c04", "c05"],
    }


def test_a_frame_goes_to_the_product_of_its_cell_type():
    assert route(_frame("a", "mono"), ROUTES) == "pv-mono"
    assert route(_frame("b", "poly"), ROUTES) == "pv-poly"
    assert route(_frame("c"), ROUTES) is None  # no type: no product
    assert route(_frame("d", "thin-film"), ROUTES) is None
    # a --references run: one product takes every frame, whatever its type
    assert route(_frame("e", "mono"), {None: "pv-cell"}) == "pv-cell"
    assert route(_frame("f"), {None: "pv-cell"}) == "pv-cell"


def test_batches_follow_the_line_and_never_mix_products():
    kinds = ["mono"] * 5 + ["poly"] * 2 + ["mono"] * 1
    frames = [_frame(f"c{i}", kind) for i, kind in enumerate(kinds)]
    batches = product_batches(frames, ROUTES, batch_size=3)
    assert [(p, [f.frame_id for f in b]) for p, b in batches] == [
        ("pv-mono", ["c0", "c1", "c2"]),
        ("pv-mono", ["c3", "c4"]),  # the changeover ends the batch
        ("pv-poly", ["c5", "c6"]),
        ("pv-mono", ["c7"]),
    ]
    with pytest.raises(DemoError, match="has no product"):
        product_batches([_frame("x")], ROUTES, batch_size=3)


def test_the_camera_decodes_each_batch_and_scoring_uses_its_product(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"c{i}.png"
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    frames = [
        Frame("c0", paths[0], kind="mono"),
        Frame("bad", tmp_path / "bad.png", kind="mono"),
        Frame("c1", paths[1], kind="poly"),
        Frame("c2", paths[2], kind="poly"),
    ]
    batches = product_batches(frames, ROUTES, batch_size=4)
    decoded = list(camera(batches))
    assert [(p, [f.frame_id for f, _ in b]) for p, b in decoded] == [
        ("pv-mono", ["c0", "bad"]),
        ("pv-poly", ["c1", "c2"]),
    ]
    assert isinstance(decoded[0][1][1][1], ImageLoadError)

    class RecordingScorer:  # scores by the image's mean; records the product it was asked for
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []

        def score(self, images, product):
            self.calls.append((product, len(images)))
            return [_result(product, float(image.mean())) for image in images]

    scorer = RecordingScorer()
    out = list(scored_batches(iter(decoded), scorer, workers=2))  # type: ignore[arg-type]
    assert sorted(scorer.calls) == [("pv-mono", 1), ("pv-poly", 2)]  # the unreadable one skipped
    assert [[r.product for r in results] for _, results in out] == [
        ["pv-mono"],
        ["pv-poly", "pv-poly"],
    ]


def _line() -> list[tuple[Frame, ScoreResult]]:
    """pv-mono: 4 functional (one alarm), defects p=1/3 (caught), 2/3 (missed), 1 (caught)."""
    rows = [
        ("m0", "mono", 0.0, 0.2),
        ("m1", "mono", 0.0, 0.4),
        ("m2", "mono", 0.0, 1.5),  # a false alarm
        ("m3", "mono", 0.0, 0.3),
        ("m4", "mono", 1 / 3, 1.2),
        ("m5", "mono", 2 / 3, 0.9),
        ("m6", "mono", 1.0, 2.0),
        ("p0", "poly", 0.0, 0.1),
        ("p1", "poly", 1.0, 3.0),
    ]
    return [(_frame(name, kind, p), _result(ROUTES[kind], score)) for name, kind, p, score in rows]


def test_line_quality_per_product_and_on_the_certain_labels():
    mono = [(f, r) for f, r in _line() if r.product == "pv-mono"]
    q = line_quality(mono)
    assert (q["frames"], q["alarms"], q["labelled"]) == (7, 3, 7)
    assert (q["functional"], q["defective"], q["defective_p50"], q["defective_certain"]) == (
        4,
        3,
        2,
        1,
    )
    # AUROC, p > 0: defect scores 1.2, 0.9, 2.0 against 0.2, 0.4, 1.5, 0.3 -> 10 of 12 pairs
    assert q["auroc"] == pytest.approx(10 / 12)
    # certain labels only (p 0 vs 1): 2.0 beats all four functional cells
    assert q["auroc_certain"] == pytest.approx(1.0)
    assert q["false_alarm_rate"] == pytest.approx(1 / 4)
    assert q["detection_rate"] == pytest.approx(2 / 3)  # p > 0
    assert q["detection_rate_p50"] == pytest.approx(1 / 2)  # p >= 0.5: 2/3 missed, 1 caught
    assert q["detection_rate_certain"] == pytest.approx(1.0)
    overall = line_quality(_line())
    assert (overall["frames"], overall["alarms"], overall["functional"]) == (9, 4, 5)
    assert overall["false_alarm_rate"] == pytest.approx(1 / 5)


def test_line_quality_without_labels_or_without_a_class():
    unlabelled = [(_frame("x"), _result("pv-cell", 2.0))]
    q = line_quality(unlabelled)
    assert q == {"frames": 1, "alarms": 1, "labelled": 0, "auroc": None, "auroc_certain": None}
    good_only = line_quality([(_frame("g", "mono", 0.0), _result("pv-mono", 0.5))])
    assert good_only["auroc"] is None and good_only["false_alarm_rate"] == 0.0
    assert good_only["detection_rate_certain"] is None  # no defect to detect
    assert line_quality([])["frames"] == 0


def test_the_summary_table_has_a_column_per_product_and_one_for_the_line():
    line = _line()
    products = {
        name: {
            "cell_type": kind,
            "threshold": 1.0,
            "target_far": 0.01,
            **line_quality([(f, r) for f, r in line if r.product == name]),
        }
        for kind, name in ROUTES.items()
    }
    summary = {
        "products": products,
        "overall": line_quality(line),
        "scored": 9,
        "errors": 0,
        "alarms": 4,
        "frames_per_s": 3.0,
        "stream_seconds": 3.0,
        "total_seconds": 9.0,
        "out": "demo-out",
        "plots": ["demo-out/plots/pv-mono-roc.png"],
    }
    json.dumps(summary)  # the summary is written as JSON
    console = Console(record=True, width=100)
    _print_summary(console, summary)
    text = console.export_text()
    for expected in (
        "pv-mono",
        "pv-poly",
        "all",
        "AUROC certain (p 0 vs 1)",
        "25.0% of 4",  # false alarms, pv-mono
        "20.0% of 5",  # false alarms, the line
        "50.0% of 2",  # detected p >= 0.5, pv-mono
        "1.0000 (1%)",
        "plots/",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_the_demo_onboards_with_the_default_of_product_add():
    import inspect

    from adqc.demo import run_demo
    from adqc.demo_cli import demo
    from inference.onboarding import DEFAULT_DETECTOR

    option = inspect.signature(demo).parameters["detector"].default
    assert option.default.value == DEFAULT_DETECTOR
    assert inspect.signature(run_demo).parameters["detector"].default == DEFAULT_DETECTOR
