r"""``adqc demo``: the whole flow embedded — no servers. The demo models a line that makes one
product at a time.

1. Loads the shipped projector checkpoint (pretrain/checkpoints/mobilenet_v2.pt) into the
   in-process engine; stops with a clear message when it is missing.
2. Onboards one product per cell type of the ``elpv-dataset`` package, ``pv-mono`` and
   ``pv-poly``, each from the first 8 functional cells of its type by file name (probability 0
   in data/labels.csv), with the default detector of ``adqc product add``. ``--references``
   onboards one product (``pv-cell``) from another folder instead, and every frame goes to it.
3. Streams the other cells through the scorer as a simulated camera: a folder source that
   decodes the next batch in a background thread while the current one is scored. Each frame
   is routed to the product of its cell type (the camera's metadata); the cells come in the
   dataset's order, which runs one type for a while and then the other (ten runs over the 2,624
   cells), like a line's changeovers, and a batch never mixes products.
4. Writes ``results.jsonl`` (every frame), ``alarms.jsonl`` (defective frames:
   the ``AlarmMessage`` records ``adqc serve`` would publish, built by ``ingest.messages``, valid
   against docs/schemas/alarm.v1.json, with the same alarm ids) and one heatmap PNG per alarm
   (``heatmaps/<alarm_id>.png``) under ``--out`` (default ./demo-out; re-running replaces
   them); with labels, also per product a ROC curve and a score histogram with the calibrated
   threshold drawn (``plots/<product>-roc.png``, ``plots/<product>-histogram.png``). It prints
   and writes (``summary.json``) per product and overall: AUROC against the dataset labels
   (probability > 0 = defective), AUROC on the certain-label subset (probability 0 vs 1), the
   alarm rate on functional cells at the calibrated threshold (false alarms) and the detection
   rates on defective cells (probability >= 0.5, and = 1). No AUROC for a ``--source`` folder,
   which has no labels.

By default the stream is subsampled to DEFAULT_LIMIT frames, evenly spaced over the 2,608
cells that are not references (the mix of classes and of cell types kept); ``--limit 0``
streams them all (see docs/ONBOARDING.md for the measured rates: 24 frames/s with the
``s8-patchcore`` detector at 256 px on 2 quiet CPU cores).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from evaluation.datasets import DatasetError, elpv_data_dir
from evaluation.metrics import auroc
from inference.calibration import DEFAULT_TARGET_FAR
from inference.frames import load_frame
from inference.onboarding import DEFAULT_DETECTOR, find_images, onboard
from inference.records import ProductRecord
from inference.scorer import Scorer, ScoreResult
from inference.store import open_store
from ingest.messages import build_alarm, build_heatmap
from ingest.schemas import AlarmMessage, FrameHeaders, Source, alarm_id_for, utc_now
from pretrain.preprocess import ImageLoadError

#: the product of each elpv cell type: the line makes one at a time
PRODUCTS_BY_TYPE = {"mono": "pv-mono", "poly": "pv-poly"}
#: the one product of a ``--references`` run
PRODUCT = "pv-cell"
DEFAULT_LIMIT = 1200
DEFAULT_OUT = Path("demo-out")
SHOTS = 8  # good images per product
DEMO_LINE = "demo-line"
DEMO_CAMERA = "demo-camera"
DEMO_TOPIC = "demo"


class DemoError(RuntimeError):
    """The demo cannot run as asked (missing checkpoint, empty source, ...)."""


@dataclass(frozen=True)
class Frame:
    frame_id: str
    path: Path
    label: int | None = None  # 1 defective, 0 functional, None unknown
    probability: float | None = None  # elpv defect probability
    kind: str | None = None  # elpv cell type: mono | poly


def elpv_root() -> Path:
    """The installed elpv-dataset's data folder (labels.csv + images/)."""
    try:
        return elpv_data_dir()
    except DatasetError as exc:  # not installed, or installed without labels.csv
        raise DemoError(str(exc)) from exc


def elpv_frames(root: Path | None = None) -> list[Frame]:
    """Every labelled cell, in file order."""
    root = root or elpv_root()
    frames = []
    with open(root / "labels.csv") as handle:
        for row in csv.reader(handle, delimiter=" ", skipinitialspace=True):
            if not row:
                continue
            name, probability, kind = row[0], float(row[1]), row[2]
            frames.append(
                Frame(Path(name).stem, root / name, int(probability > 0), probability, kind)
            )
    return frames


def elpv_shots(frames: Sequence[Frame], per_type: int = SHOTS) -> dict[str, list[Frame]]:
    """The first ``per_type`` functional cells of each type, by file name: {type: cells}."""
    shots = {}
    for kind in sorted({f.kind for f in frames if f.kind}):
        functional = sorted((f for f in frames if f.kind == kind and f.label == 0), key=_by_path)
        shots[kind] = functional[:per_type]
    return shots


def route(frame: Frame, routes: dict[str | None, str]) -> str | None:
    """The product a frame belongs to: the one of its cell type, else the product for frames of
    any type (key None, a ``--references`` run), else None (unroutable)."""
    return routes.get(frame.kind, routes.get(None))


def product_batches(
    frames: Sequence[Frame], routes: dict[str | None, str], batch_size: int
) -> list[tuple[str, list[Frame]]]:
    """The camera's batches in stream order, (product, frames): a batch ends at ``batch_size``
    frames or where the line changes product, so it never mixes products."""
    batches: list[tuple[str, list[Frame]]] = []
    for frame in frames:
        product = route(frame, routes)
        if product is None:
            raise DemoError(f"frame {frame.frame_id} (type {frame.kind}) has no product")
        if batches and batches[-1][0] == product and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(frame)
        else:
            batches.append((product, [frame]))
    return batches


def _by_path(frame: Frame) -> str:
    return str(frame.path)


def folder_frames(source: str | Path) -> list[Frame]:
    """Unlabelled frames from an image folder (or glob), sorted by path; the frame id is the
    file's stem with whitespace replaced (frame ids are single tokens, as on Kafka)."""
    return [Frame(re.sub(r"\s+", "_", path.stem), path) for path in find_images(source)]


def evenly_spaced(frames: Sequence[Frame], limit: int | None) -> list[Frame]:
    """At most ``limit`` frames spread evenly over the sequence (all when limit is 0/None)."""
    if not limit or limit >= len(frames):
        return list(frames)
    picks = np.linspace(0, len(frames) - 1, limit).round().astype(int)
    return [frames[i] for i in picks]


Decoded = list[tuple[Frame, np.ndarray | ImageLoadError]]


def camera(batches: Sequence[tuple[str, list[Frame]]]) -> Iterator[tuple[str, Decoded]]:
    """A folder camera: (product, [(frame, image or the error reading it)]) per batch, the next
    batch decoded in a background thread while the caller scores the current one."""

    def read(chunk: Sequence[Frame]) -> Decoded:
        out: Decoded = []
        for frame in chunk:
            try:
                out.append((frame, load_frame(frame.path)))
            except ImageLoadError as exc:
                out.append((frame, exc))
        return out

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="camera") as pool:
        pending = pool.submit(read, batches[0][1]) if batches else None
        for i, (product, _) in enumerate(batches):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(read, batches[i + 1][1]) if i + 1 < len(batches) else None
            yield product, batch


def default_workers() -> int:
    """Scoring workers: one per available core, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def scored_batches(
    batches: Iterator[tuple[str, Decoded]], scorer: Scorer, workers: int
) -> Iterator[tuple[Decoded, list[ScoreResult]]]:
    """(batch, results of its readable images against the batch's product) in camera order,
    with up to ``workers`` batches scored at once (the caller runs torch with one thread per
    worker, see run_demo)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer") as pool:
        in_flight: deque = deque()
        for product, batch in batches:
            images = [image for _, image in batch if isinstance(image, np.ndarray)]
            in_flight.append((batch, pool.submit(scorer.score, images, product)))
            if len(in_flight) >= workers:
                done, future = in_flight.popleft()
                yield done, future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch ops with ``count`` intra-op threads inside the block. With several scoring
    workers each runs on one thread: no OpenMP barriers between cores, which collapse under
    CPU contention (measured: 2 threads x 1 worker ran 3.5x slower than 1 thread on a busy
    2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prepare_out(out: Path) -> None:
    """Replace this demo's previous outputs (and only those)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "heatmaps", ignore_errors=True)
    (out / "heatmaps").mkdir()
    shutil.rmtree(out / "plots", ignore_errors=True)
    for name in ("results.jsonl", "alarms.jsonl", "summary.json"):
        (out / name).unlink(missing_ok=True)


def _result_line(frame: Frame, result: ScoreResult) -> dict:
    line = {"frame_id": frame.frame_id, "file": str(frame.path), "status": "ok"}
    line.update(result.to_dict())
    line["regions"] = len(result.regions)
    if frame.label is not None:
        line.update(label=frame.label, defect_probability=frame.probability, cell_type=frame.kind)
    return line


def _alarm(
    frame: Frame, index: int, image: np.ndarray, result: ScoreResult, heatmaps: Path
) -> AlarmMessage:
    """The frame's alarm, built as ``adqc serve`` builds it (same id, regions, severity); the
    heatmap PNG is written under ``heatmaps`` (``<alarm_id>.png``) and referenced by URI.
    The folder camera has no Kafka position: ``source`` is topic ``demo``, offset = the
    frame's index in the stream."""
    now = utc_now()
    headers = FrameHeaders(
        product=result.product,
        line=DEMO_LINE,
        camera=DEMO_CAMERA,
        frame_id=frame.frame_id,
        capture_time=now,
        content_type="image/png",
    )
    alarm_id = alarm_id_for(frame.frame_id, result.model_id)
    heatmap = build_heatmap(image, result, alarm_id, "uri", heatmaps)
    source = Source(topic=DEMO_TOPIC, partition=0, offset=index)
    return build_alarm(headers, result, source=source, detected_at=now, heatmap=heatmap)


def run_demo(
    *,
    out: Path = DEFAULT_OUT,
    source: str | Path | None = None,
    references: str | Path | None = None,
    limit: int | None = DEFAULT_LIMIT,
    checkpoint: Path | None = None,
    store_url: str = "memory://",
    batch_size: int = 16,
    workers: int | None = None,
    shots: int = SHOTS,
    target_far: float = DEFAULT_TARGET_FAR,
    detector: str = DEFAULT_DETECTOR,
    product: str = PRODUCT,
    console: Console | None = None,
) -> dict:
    """Run the demo; returns the summary (also written to OUT/summary.json). ``shots`` are
    per product; ``product`` names the one product of a ``references`` run."""
    console = console or Console()
    started = time.perf_counter()

    from inference.engines.local import LocalEngine
    from pretrain.checkpoint import default_checkpoint

    if checkpoint is None:
        try:
            checkpoint = default_checkpoint("mobilenet_v2")
        except FileNotFoundError as exc:
            raise DemoError(
                f"the shipped checkpoint is missing: {exc}. The demo runs the pretrained "
                "projector only; it will not fall back to an untrained one."
            ) from exc
    elif not Path(checkpoint).is_file():
        raise DemoError(f"checkpoint not found: {checkpoint}")

    cells = elpv_frames() if source is None or references is None else []
    all_frames = cells if source is None else folder_frames(source)
    plan: dict[str, list[Path]] = {}  # product -> its reference images
    routes: dict[str | None, str] = {}  # cell type (None: any) -> product
    cell_types: dict[str, str | None] = {}  # product -> its cell type
    if references is not None:
        plan[product] = find_images(references)[:shots]
        routes[None], cell_types[product] = product, None
    else:
        for kind, kind_shots in elpv_shots(cells, per_type=shots).items():
            name = PRODUCTS_BY_TYPE.get(kind, f"pv-{kind}")
            plan[name] = [f.path for f in kind_shots]
            routes[kind], cell_types[name] = name, kind
    taken = {p.resolve() for paths in plan.values() for p in paths}
    stream = [f for f in all_frames if f.path.resolve() not in taken]
    if not stream:
        raise DemoError(f"no frames to stream from {source or elpv_root()}")
    unroutable = [f for f in stream if route(f, routes) is None]
    if unroutable:
        raise DemoError(
            f"{len(unroutable)} frame(s) of {source} carry no cell type, so no product: give "
            "--references to onboard the one product they belong to"
        )
    frames = evenly_spaced(stream, limit)
    batches = product_batches(frames, routes, batch_size)

    console.print(f"[bold]adqc demo[/]: checkpoint {checkpoint}")
    engine = LocalEngine(checkpoint)
    store = open_store(store_url)
    loaded = time.perf_counter()
    records: dict[str, ProductRecord] = {}
    onboarding_seconds: dict[str, float] = {}
    for name, paths in plan.items():
        onboarded = onboard(
            engine,
            store,
            name,
            paths,
            shots=shots,
            target_far=target_far,
            detector=detector,  # type: ignore[arg-type]
        )
        record = records[name] = onboarded.record
        onboarding_seconds[name] = onboarded.seconds
        kind = f" ({cell_types[name]} cells)" if cell_types[name] else ""
        console.print(
            f"onboarded [bold]{name}[/]{kind} v{record.version} from {len(paths)} good images "
            f"in {onboarded.seconds:.1f} s: {record.detector}, threshold "
            f"{record.calibration.threshold:.4f} ({record.calibration.rule})"
        )
    console.print(f"store {store.url}")
    sampled = f", {len(frames)} of {len(stream)} evenly spaced" if len(frames) < len(stream) else ""
    changeovers = sum(1 for a, b in zip(batches, batches[1:], strict=False) if a[0] != b[0])
    console.print(
        f"streaming {len(frames)} frame(s){sampled} from {source or elpv_root()}, "
        f"routed by cell type ({changeovers} product changeover(s))"
    )

    out = Path(out)
    _prepare_out(out)
    scorer = Scorer(engine, store, batch_size=batch_size)
    scored: list[tuple[Frame, ScoreResult]] = []
    alarms = errors = 0
    stream_started = time.perf_counter()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} frames/s, {task.fields[alarms]} alarm(s)"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    workers = workers or default_workers()
    index = {frame: i for i, frame in enumerate(frames)}
    with (
        _torch_threads(1 if workers > 1 else torch.get_num_threads()),
        open(out / "results.jsonl", "w") as results_file,
        open(out / "alarms.jsonl", "w") as alarms_file,
        Progress(*columns, console=console, transient=False) as progress,
    ):
        task = progress.add_task("scoring", total=len(frames), rate="-", alarms=0)
        done = 0
        for batch, results in scored_batches(camera(batches), scorer, workers):
            good = [(frame, image) for frame, image in batch if isinstance(image, np.ndarray)]
            for frame, error in batch:
                if isinstance(error, ImageLoadError):
                    errors += 1
                    line = {"frame_id": frame.frame_id, "file": str(frame.path)}
                    line.update(status="error", error=str(error), product=route(frame, routes))
                    results_file.write(json.dumps(line) + "\n")
            for (frame, image), result in zip(good, results, strict=True):
                results_file.write(json.dumps(_result_line(frame, result)) + "\n")
                scored.append((frame, result))
                if result.is_defective:
                    alarms += 1
                    alarm = _alarm(frame, index[frame], image, result, out / "heatmaps")
                    alarms_file.write(alarm.model_dump_json() + "\n")
            done += len(batch)
            rate = done / max(time.perf_counter() - stream_started, 1e-9)
            progress.update(task, advance=len(batch), rate=f"{rate:.1f}", alarms=alarms)
    stream_seconds = time.perf_counter() - stream_started
    store.close()

    products: dict[str, dict] = {}
    for name, record in records.items():
        mine = [(f, r) for f, r in scored if r.product == name]
        products[name] = {
            "cell_type": cell_types[name],
            "reference_version": record.version,
            "model_id": record.model_id,
            "detector": record.detector,
            "shots": [str(p) for p in plan[name]],
            "threshold": record.calibration.threshold,
            "threshold_rule": record.calibration.rule,
            "target_far": record.calibration.target_far,
            "onboarding_seconds": round(onboarding_seconds[name], 3),
            **line_quality(mine),
        }
    summary: dict = {
        "products": products,
        "overall": line_quality(scored),
        "checkpoint": str(checkpoint),
        "source": str(source or elpv_root()),
        "frames_available": len(stream),
        "frames": len(frames),
        "scored": len(frames) - errors,
        "errors": errors,
        "alarms": alarms,
        "changeovers": changeovers,
        "stream_seconds": round(stream_seconds, 3),
        "frames_per_s": round((len(frames) - errors) / max(stream_seconds, 1e-9), 3),
        "startup_seconds": round(loaded - started, 3),
        "onboarding_seconds": round(sum(onboarding_seconds.values()), 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "batch_size": batch_size,
        "workers": workers,
        "out": str(out),
    }
    summary["plots"] = _plots(out / "plots", scored, records, console)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(console, summary)
    return summary


def line_quality(scored: Sequence[tuple[Frame, ScoreResult]]) -> dict:
    """What a line sees of the scored frames: frames, alarms and, for labelled frames, AUROC
    (probability > 0 = defective, raw scores), AUROC on the certain labels (0 vs 1), the alarm
    rate on functional cells (false alarms) and the detection rates on defective cells
    (probability >= 0.5, and = 1) at each frame's calibrated threshold (``is_defective``)."""
    quality: dict = {"frames": len(scored), "alarms": sum(r.is_defective for _, r in scored)}
    labelled = [(f, r) for f, r in scored if f.probability is not None]
    if not labelled:
        return quality | {"labelled": 0, "auroc": None, "auroc_certain": None}
    p = np.array([f.probability for f, _ in labelled], dtype=float)
    score = np.array([r.score for _, r in labelled], dtype=float)
    alarmed = np.array([r.is_defective for _, r in labelled], dtype=bool)
    certain = (p == 0) | (p == 1)
    return quality | {
        "labelled": len(labelled),
        "functional": int((p == 0).sum()),
        "defective": int((p > 0).sum()),
        "defective_p50": int((p >= 0.5).sum()),
        "defective_certain": int((p == 1).sum()),
        "auroc": auroc(score, (p > 0).astype(int)),  # None unless both classes
        "auroc_certain": auroc(score[certain], (p[certain] == 1).astype(int)),
        "false_alarm_rate": _rate(alarmed[p == 0]),
        "detection_rate": _rate(alarmed[p > 0]),
        "detection_rate_p50": _rate(alarmed[p >= 0.5]),
        "detection_rate_certain": _rate(alarmed[p == 1]),
    }


def _rate(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _plots(
    folder: Path,
    scored: Sequence[tuple[Frame, ScoreResult]],
    records: dict[str, ProductRecord],
    console: Console,
) -> list[str]:
    """Per product with both classes labelled: its ROC curves (all labels, certain labels) and
    its score histogram with the calibrated threshold drawn; the files written."""
    from evaluation.report import histogram_png, roc_png
    from pretrain.extras import MissingExtraError

    written = []
    for name, record in records.items():
        mine = [(f, r) for f, r in scored if r.product == name and f.probability is not None]
        p = np.array([f.probability for f, _ in mine], dtype=float)
        if not ((p == 0).any() and (p > 0).any()):
            continue
        score = np.array([r.score for _, r in mine], dtype=float)
        labels = (p > 0).astype(int)
        certain = (p == 0) | (p == 1)
        subset = {"certain labels": (score[certain], (p[certain] == 1).astype(int))}
        threshold = record.calibration.threshold
        try:
            pictures = {
                "roc": roc_png(score, labels, curves=subset, title=f"ROC: {name}"),
                "histogram": histogram_png(
                    score, labels, threshold, threshold_label="calibrated threshold"
                ),
            }
        except MissingExtraError as exc:  # matplotlib is the eval extra
            console.print(f"[yellow]no plots:[/] {exc}")
            return written
        folder.mkdir(parents=True, exist_ok=True)
        for kind, b64 in pictures.items():
            path = folder / f"{name}-{kind}.png"
            path.write_bytes(base64.b64decode(b64))
            written.append(str(path))
    return written


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_summary(console: Console, summary: dict) -> None:
    """One column per product and one for the whole line; alarms at each product's calibrated
    threshold."""
    columns = {**summary["products"], "all": summary["overall"]}
    table = Table(title="adqc demo: the line, per product")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")

    def row(title: str, cell) -> None:
        table.add_row(title, *(cell(name, q) for name, q in columns.items()))

    def count(q: dict, key: str) -> str:
        return f" of {q[key]}" if q.get(key) is not None else ""

    row("cell type", lambda n, q: q.get("cell_type") or ("any" if n != "all" else ""))
    row("frames scored", lambda n, q: str(q["frames"]))
    row("alarms", lambda n, q: str(q["alarms"]))
    row(
        "threshold (target FAR)",
        lambda n, q: f"{q['threshold']:.4f} ({q['target_far']:.0%})" if n != "all" else "-",
    )
    row("AUROC (p > 0)", lambda n, q: _num(q["auroc"]))
    row("AUROC certain (p 0 vs 1)", lambda n, q: _num(q["auroc_certain"]))
    row(
        "false alarms (p = 0)",
        lambda n, q: _pct(q.get("false_alarm_rate")) + count(q, "functional"),
    )
    row(
        "detected (p >= 0.5)",
        lambda n, q: _pct(q.get("detection_rate_p50")) + count(q, "defective_p50"),
    )
    row(
        "detected (p = 1)",
        lambda n, q: _pct(q.get("detection_rate_certain")) + count(q, "defective_certain"),
    )
    console.print(table)
    if not summary["overall"].get("labelled"):
        console.print("AUROC: n/a (no labels for this source)")
    console.print(
        f"{summary['scored']} frames scored, {summary['errors']} unreadable, "
        f"{summary['alarms']} alarm(s); {summary['frames_per_s']:.1f} frames/s "
        f"({summary['stream_seconds']:.1f} s streaming; {summary['total_seconds']:.1f} s in all)"
    )
    plots = ", plots/" if summary["plots"] else ""
    console.print(
        f"outputs: {summary['out']}/results.jsonl, alarms.jsonl, heatmaps/{plots}, summary.json"
    )
