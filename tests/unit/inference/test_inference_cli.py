"""`adqc product ...` and `adqc demo` through the real CLI (UNTRAINED projector: plumbing only)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adqc.cli import build_app
from inference.onboarding import DEFAULT_DETECTOR

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(build_app(), list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(0)
    for i in range(3):
        image = np.clip(120 + rng.normal(0, 20, (96, 128, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(directory / f"part_{i}.png")
    return directory


def test_product_lifecycle(tmp_path, good_dir, untrained_checkpoint):
    store = f"file://{tmp_path / 'store'}"
    added = _run(
        "product", "add", "bracket", "--images", str(good_dir / "*.png"), "--shots", "3",
        "--store", store, "--checkpoint", str(untrained_checkpoint),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "onboarded bracket v1" in added.output and "threshold" in added.output
    listed = _run("product", "list", "--store", store, "--json")
    assert [row["product"] for row in json.loads(listed.output)] == ["bracket"]
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert shown["version"] == 1 and shown["kept_versions"] == [1]
    assert shown["calibration"]["method"] == "leave-one-out"
    assert _run("product", "remove", "bracket", "--store", store, "--yes").exit_code == 0
    assert "no products" in _run("product", "list", "--store", store).output


def test_product_add_with_its_own_input_size(tmp_path, good_dir, untrained_checkpoint):
    store = f"file://{tmp_path / 'store'}"
    added = _run(
        "product", "add", "bracket", "--images", str(good_dir), "--shots", "3",
        "--image-size", "192", "--store", store, "--checkpoint", str(untrained_checkpoint),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "s8-patchcore, 192px" in added.output
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert shown["image_size"] == 192


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("product", "show", "ghost"), "unknown product 'ghost'"),
        (("product", "remove", "ghost"), "unknown product 'ghost'"),
        (("product", "history", "ghost"), "unknown product 'ghost'"),
        (("product", "pin", "ghost", "1"), "unknown product 'ghost'"),
        (("product", "rollback", "ghost"), "unknown product 'ghost'"),
        (("product", "threshold", "set", "ghost", "1.0", "--reason", "r"), "unknown product"),
        (("product", "add", "x", "--images", "/nonexistent/dir"), "no such directory"),
        (("product", "add", "x", "--images", "{good}", "--shots", "5"), "fewer than --shots 5"),
        (("product", "add", "x", "--images", "{good}", "--detector", "knn"), "'knn' is not one of"),
        (("product", "add", "x y", "--images", "{good}"), "invalid product name"),
        (("product", "add", "x", "--images", "{good}", "--image-size", "250"), "multiple of 16"),
        (("product", "add", "x", "--images", "{good}", "--image-size", "1024"), "64 to 512"),
        (
            (
                "product",
                "add",
                "x",
                "--images",
                "{good}",
                "--detector",
                "featurenorm",
                "--image-size",
                "320",
            ),
            "--image-size is a setting of the s8-patchcore detector",
        ),  # fmt: skip
    ],
)
def test_product_errors_are_one_line_and_exit_2(tmp_path, good_dir, args, message):
    store = f"file://{tmp_path / 'store'}"
    args = tuple(a.replace("{good}", str(good_dir)) for a in args)
    result = _run(*args, "--store", store)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_unreachable_redis_is_a_clean_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _run("product", "list", "--store", f"redis://127.0.0.1:{port}/0?retries=1")
    assert result.exit_code == 1  # a runtime failure, not bad input
    assert (
        f"Redis at redis://127.0.0.1:{port}/0" in result.output and "unreachable" in result.output
    )


def test_demo_stops_when_the_shipped_checkpoint_is_missing(tmp_path, monkeypatch):
    import pretrain.checkpoint

    monkeypatch.setattr(pretrain.checkpoint, "CHECKPOINT_DIR", tmp_path / "none")
    result = _run("demo", "--out", str(tmp_path / "out"), "--limit", "2")
    assert result.exit_code == 1
    assert "shipped checkpoint is missing" in result.output and "make pretrain" in result.output
    assert not (tmp_path / "out").exists()


def test_demo_end_to_end_and_idempotent(tmp_path):
    # the path `make demo` takes: the shipped checkpoint, the elpv cells, a memory store
    out = tmp_path / "demo-out"
    args = (
        *("demo", "--out", str(out), "--limit", "6", "--batch-size", "4", "--shots", "2"),
        *("--json", str(tmp_path / "s.json")),
    )
    first = _run(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "s.json").read_text())
    # one product per cell type, 2 references each (of 2,624 cells)
    assert summary["frames"] == 6 and summary["frames_available"] == 2620
    assert summary["scored"] == 6 and summary["errors"] == 0 and summary["workers"] >= 1
    products = summary["products"]
    assert set(products) == {"pv-mono", "pv-poly"}
    for name, product in products.items():
        assert product["cell_type"] == name.removeprefix("pv-")
        assert product["model_id"].startswith("mobilenet_v2:") and len(product["shots"]) == 2
        assert product["detector"] == DEFAULT_DETECTOR  # that of `adqc product add`
        assert product["threshold"] > 0 and product["target_far"] == 0.01
    assert sum(p["frames"] for p in products.values()) == summary["overall"]["frames"] == 6
    overall = summary["overall"]
    assert overall["auroc"] is None or 0.0 <= overall["auroc"] <= 1.0
    assert summary["frames_per_s"] > 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(line["status"] == "ok" for line in lines)
    assert {"score", "threshold", "is_defective", "label", "reference_version"} <= set(lines[0])
    # every frame was scored by the product of its cell type
    assert all(line["product"] == f"pv-{line['cell_type']}" for line in lines)
    alarms = [json.loads(x) for x in (out / "alarms.jsonl").read_text().splitlines()]
    assert len(alarms) == summary["alarms"] == sum(line["is_defective"] for line in lines)
    _assert_alarms_are_serve_alarms(alarms)
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(
        f"{a['alarm_id']}.png" for a in alarms
    )
    (out / "heatmaps" / "stale.png").write_bytes(b"old")
    second = _run(*args)  # re-running replaces the outputs
    assert second.exit_code == 0
    assert not (out / "heatmaps" / "stale.png").exists()
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def _assert_alarms_are_serve_alarms(alarms: list[dict]) -> None:
    """The demo's alarms are serve's: valid against docs/schemas/alarm.v1.json, same ids."""
    import jsonschema

    from ingest.schemas import SCHEMA_DIR, alarm_id_for

    schema = json.loads((SCHEMA_DIR / "alarm.v1.json").read_text())
    for alarm in alarms:
        jsonschema.validate(alarm, schema)
        assert alarm["alarm_id"] == alarm_id_for(alarm["frame_id"], alarm["model_id"])
        assert alarm["heatmap"]["encoding"] == "uri"


def test_demo_on_a_folder_source_with_a_corrupt_frame(tmp_path, good_dir, untrained_checkpoint):
    source = tmp_path / "camera"
    source.mkdir()
    for path in sorted(good_dir.iterdir()):
        (source / path.name).write_bytes(path.read_bytes())
    (source / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = _run(
        "demo", "--out", str(tmp_path / "out"), "--source", str(source),
        "--references", str(good_dir), "--shots", "2", "--checkpoint", str(untrained_checkpoint),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["overall"]["auroc"] is None and "no labels" in result.output
    assert list(summary["products"]) == ["pv-cell"]  # --references: one product takes all
    # the copies in the camera folder are other files than the references: all are streamed
    assert summary["frames"] == 4 and summary["scored"] == 3 and summary["errors"] == 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    (bad,) = [line for line in lines if line["status"] == "error"]
    assert "zz_corrupt.png" in bad["error"]


def test_demo_on_a_folder_source_needs_references(tmp_path, good_dir, untrained_checkpoint):
    # a folder's frames carry no cell type, so no elpv product is theirs
    result = _run(
        "demo", "--out", str(tmp_path / "out"), "--source", str(good_dir),
        "--checkpoint", str(untrained_checkpoint),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "carry no cell type" in result.output and "--references" in result.output


def _published(store_url: str, n: int, make_record) -> None:
    from inference.store import open_store

    with open_store(store_url) as store:
        for seed in range(n):
            store.publish(make_record("bracket", seed=seed))


def test_history_pin_rollback_threshold_and_remove(tmp_path, record_factory):
    store = f"file://{tmp_path / 'store'}"
    _published(store, 3, record_factory)
    set_ = _run(
        "product", "threshold", "set", "bracket", "0.5", "--reason", "glare on line 2",
        "--by", "ana", "--store", store,
    )  # fmt: skip
    assert set_.exit_code == 0, set_.output
    assert "v4 (threshold-override of v3 by ana): threshold 0.5000" in set_.output
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert shown["calibration"]["threshold"] == 0.5
    assert shown["provenance"]["by"] == "ana" and shown["provenance"]["reason"] == "glare on line 2"
    rows = json.loads(_run("product", "history", "bracket", "--store", store, "--json").output)
    assert [r["version"] for r in rows] == [1, 2, 3, 4] and rows[-1]["marks"] == [
        "serving",
        "latest",
    ]
    wide = {"COLUMNS": "200"}
    table = runner.invoke(
        build_app(), ["product", "history", "bracket", "--store", store], env=wide
    )
    table = table.output
    assert "glare on line 2" in table and "ana" in table

    rolled = _run("product", "rollback", "bracket", "--store", store)
    assert rolled.exit_code == 0 and "rolled back from v4 to v3" in rolled.output
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert (shown["version"], shown["pinned_version"], shown["latest_version"]) == (3, 3, 4)
    assert _run("product", "pin", "bracket", "1", "--store", store).exit_code == 0
    assert json.loads(_run("product", "show", "bracket", "--store", store).output)["version"] == 1
    refused = _run("product", "rollback", "bracket", "--store", store)
    assert refused.exit_code == 2 and "nothing to roll back to" in refused.output
    missing = _run("product", "pin", "bracket", "9", "--store", store)
    assert missing.exit_code == 2 and "no version 9" in missing.output
    # the served (pinned) version cannot be removed alone; another can, after a yes
    served = _run("product", "remove", "bracket", "--version", "1", "--yes", "--store", store)
    assert served.exit_code == 2 and "pin another version first" in served.output
    no = runner.invoke(
        build_app(),
        ["product", "remove", "bracket", "--version", "2", "--store", store],
        input="n\n",
    )
    assert no.exit_code == 1 and "not removed" in no.output
    yes = runner.invoke(
        build_app(),
        ["product", "remove", "bracket", "--version", "2", "--store", store],
        input="y\n",
    )
    assert yes.exit_code == 0, yes.output
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert shown["kept_versions"] == [1, 3, 4]
    assert _run("product", "unpin", "bracket", "--store", store).exit_code == 0
    assert json.loads(_run("product", "show", "bracket", "--store", store).output)["version"] == 4


def test_remove_without_a_terminal_needs_yes(tmp_path, record_factory):
    store = f"file://{tmp_path / 'store'}"
    _published(store, 1, record_factory)
    refused = _run("product", "remove", "bracket", "--store", store)  # no input: no answer
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert "bracket" in _run("product", "list", "--store", store).output
    assert _run("product", "remove", "bracket", "--store", store, "--yes").exit_code == 0


def test_recalibrate_from_the_cli(tmp_path, good_dir, untrained_checkpoint):
    store = f"file://{tmp_path / 'store'}"
    common = ("--store", store, "--checkpoint", str(untrained_checkpoint))
    added = _run("product", "add", "bracket", "--images", str(good_dir), "--shots", "2", *common)
    assert added.exit_code == 0, added.output
    again = _run("product", "recalibrate", "bracket", "--images", str(good_dir), *common)
    assert again.exit_code == 0, again.output
    assert "v2 (recalibrate of v1" in again.output
    shown = json.loads(_run("product", "show", "bracket", "--store", store).output)
    assert shown["calibration"]["method"] == "held-out" and shown["calibration"]["n_normals"] == 3
