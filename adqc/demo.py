r"""``adqc demo``: the whole flow embedded — no servers.

1. Loads the shipped projector checkpoint (pretrain/checkpoints/mobilenet_v2.pt) into the
   in-process engine; stops with a clear message when it is missing.
2. Onboards product ``pv-cell`` from 8 functional cells of the ``elpv-dataset`` package
   (probability 0 in data/labels.csv): the first 4 monocrystalline and the first 4
   polycrystalline ones by file name, since the line makes both kinds and the reference pool
   must cover both (``--references`` onboards from another folder instead).
3. Streams the other cells through the scorer as a simulated camera: a folder source that
   decodes the next batch in a background thread while the current one is scored.
4. Writes ``results.jsonl`` (every frame), ``alarms.jsonl`` (defective frames:
   the ``AlarmMessage`` records ``adqc serve`` would publish, built by ``ingest.messages``, valid
   against docs/schemas/alarm.v1.json, with the same alarm ids) and one heatmap PNG per alarm
   (``heatmaps/<alarm_id>.png``) under ``--out`` (default ./demo-out; re-running replaces
   them), and prints a summary: frames, alarms, frames/s, and AUROC against the dataset
   labels (probability > 0 = defective; no AUROC for a ``--source`` folder, which has no
   labels).

By default the stream is subsampled to DEFAULT_LIMIT frames, evenly spaced over the 2,616
cells, so the demo finishes in about 2 minutes on 2 CPU cores; ``--limit 0`` streams them all
(see docs/ONBOARDING.md for the measured rates).
"""

from __future__ import annotations

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
from inference.onboarding import find_images, onboard
from inference.scorer import Scorer, ScoreResult
from inference.store import open_store
from ingest.messages import build_alarm, build_heatmap
from ingest.schemas import AlarmMessage, FrameHeaders, Source, alarm_id_for, utc_now
from pretrain.preprocess import ImageLoadError

PRODUCT = "pv-cell"
DEFAULT_LIMIT = 1200
DEFAULT_OUT = Path("demo-out")
SHOTS_PER_TYPE = 4
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


def elpv_shots(frames: Sequence[Frame], per_type: int = SHOTS_PER_TYPE) -> list[Frame]:
    """The first ``per_type`` functional cells of each type, by file name."""
    shots = []
    for kind in sorted({f.kind for f in frames if f.kind}):
        functional = sorted((f for f in frames if f.kind == kind and f.label == 0), key=_by_path)
        shots += functional[:per_type]
    return shots


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


def camera(
    frames: Sequence[Frame], batch_size: int
) -> Iterator[list[tuple[Frame, np.ndarray | ImageLoadError]]]:
    """A folder camera: batches of (frame, image or the error reading it), the next batch
    decoded in a background thread while the caller scores the current one."""

    def read(chunk: Sequence[Frame]) -> list[tuple[Frame, np.ndarray | ImageLoadError]]:
        out: list[tuple[Frame, np.ndarray | ImageLoadError]] = []
        for frame in chunk:
            try:
                out.append((frame, load_frame(frame.path)))
            except ImageLoadError as exc:
                out.append((frame, exc))
        return out

    starts = range(0, len(frames), batch_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="camera") as pool:
        pending = pool.submit(read, frames[0:batch_size]) if frames else None
        for start in starts:
            assert pending is not None
            batch = pending.result()
            following = frames[start + batch_size : start + 2 * batch_size]
            pending = pool.submit(read, following) if following else None
            yield batch


def default_workers() -> int:
    """Scoring workers: one per available core, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def scored_batches(
    batches: Iterator[list[tuple[Frame, np.ndarray | ImageLoadError]]],
    scorer: Scorer,
    product: str,
    workers: int,
) -> Iterator[tuple[list[tuple[Frame, np.ndarray | ImageLoadError]], list[ScoreResult]]]:
    """(batch, results of its readable images) in camera order, with up to ``workers`` batches
    scored at once (the caller runs torch with one thread per worker, see run_demo)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer") as pool:
        in_flight: deque = deque()
        for batch in batches:
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
    shots: int = 2 * SHOTS_PER_TYPE,
    target_far: float = DEFAULT_TARGET_FAR,
    detector: str = "featurenorm",
    product: str = PRODUCT,
    console: Console | None = None,
) -> dict:
    """Run the demo; returns the summary (also written to OUT/summary.json)."""
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
    if references is not None:
        reference_paths = find_images(references)[:shots]
    else:
        reference_paths = [f.path for f in elpv_shots(cells, per_type=(shots + 1) // 2)][:shots]
    taken = {p.resolve() for p in reference_paths}
    stream = [f for f in all_frames if f.path.resolve() not in taken]
    if not stream:
        raise DemoError(f"no frames to stream from {source or elpv_root()}")
    frames = evenly_spaced(stream, limit)

    console.print(f"[bold]adqc demo[/]: checkpoint {checkpoint}")
    engine = LocalEngine(checkpoint)
    store = open_store(store_url)
    loaded = time.perf_counter()
    onboarded = onboard(
        engine,
        store,
        product,
        reference_paths,
        shots=shots,
        target_far=target_far,
        detector=detector,  # type: ignore[arg-type]
    )
    record = onboarded.record
    calibration = record.calibration
    console.print(
        f"onboarded [bold]{product}[/] v{record.version} from {len(reference_paths)} good images "
        f"in {onboarded.seconds:.1f} s: threshold {calibration.threshold:.4f} "
        f"({calibration.rule}), store {store.url}"
    )
    sampled = f", {len(frames)} of {len(stream)} evenly spaced" if len(frames) < len(stream) else ""
    console.print(f"streaming {len(frames)} frame(s){sampled} from {source or elpv_root()}")

    out = Path(out)
    _prepare_out(out)
    scorer = Scorer(engine, store, batch_size=batch_size)
    labels: list[int] = []
    scores: list[float] = []
    kinds: list[str | None] = []
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
        for batch, results in scored_batches(camera(frames, batch_size), scorer, product, workers):
            good = [(frame, image) for frame, image in batch if isinstance(image, np.ndarray)]
            for frame, error in batch:
                if isinstance(error, ImageLoadError):
                    errors += 1
                    line = {"frame_id": frame.frame_id, "file": str(frame.path)}
                    line.update(status="error", error=str(error))
                    results_file.write(json.dumps(line) + "\n")
            for (frame, image), result in zip(good, results, strict=True):
                results_file.write(json.dumps(_result_line(frame, result)) + "\n")
                if frame.label is not None:
                    labels.append(frame.label)
                    scores.append(result.score)
                    kinds.append(frame.kind)
                if result.is_defective:
                    alarms += 1
                    alarm = _alarm(frame, index[frame], image, result, out / "heatmaps")
                    alarms_file.write(alarm.model_dump_json() + "\n")
            done += len(batch)
            rate = done / max(time.perf_counter() - stream_started, 1e-9)
            progress.update(task, advance=len(batch), rate=f"{rate:.1f}", alarms=alarms)
    stream_seconds = time.perf_counter() - stream_started
    store.close()

    summary: dict = {
        "product": product,
        "reference_version": record.version,
        "model_id": record.model_id,
        "checkpoint": str(checkpoint),
        "detector": record.detector,
        "shots": [str(p) for p in reference_paths],
        "threshold": calibration.threshold,
        "threshold_rule": calibration.rule,
        "target_far": calibration.target_far,
        "source": str(source or elpv_root()),
        "frames_available": len(stream),
        "frames": len(frames),
        "scored": len(frames) - errors,
        "errors": errors,
        "alarms": alarms,
        "stream_seconds": round(stream_seconds, 3),
        "frames_per_s": round((len(frames) - errors) / max(stream_seconds, 1e-9), 3),
        "startup_seconds": round(loaded - started, 3),
        "onboarding_seconds": round(onboarded.seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "batch_size": batch_size,
        "workers": workers,
        "out": str(out),
        "auroc": None,
    }
    if labels:
        label_array, score_array, kind_array = np.array(labels), np.array(scores), np.array(kinds)
        alarmed = score_array > calibration.threshold
        summary.update(
            auroc=auroc(score_array, label_array),  # raw scores; None unless both classes
            auroc_by_cell_type={
                kind: auroc(score_array[kind_array == kind], label_array[kind_array == kind])
                for kind in sorted({k for k in kinds if k})
            },
            defective=int(label_array.sum()),
            functional=int((label_array == 0).sum()),
            alarm_rate_functional=_rate(alarmed[label_array == 0]),
            alarm_rate_defective=_rate(alarmed[label_array == 1]),
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(console, summary)
    return summary


def _rate(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _print_summary(console: Console, summary: dict) -> None:
    table = Table(title=f"adqc demo: {summary['product']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("frames", f"{summary['scored']} scored, {summary['errors']} unreadable")
    table.add_row("alarms", str(summary["alarms"]))
    table.add_row(
        "throughput",
        f"{summary['frames_per_s']:.1f} frames/s ({summary['stream_seconds']:.1f} s streaming; "
        f"{summary['total_seconds']:.1f} s in all)",
    )
    table.add_row("threshold", f"{summary['threshold']:.4f} ({summary['threshold_rule']})")
    if summary["auroc"] is not None:
        by_type = ", ".join(
            f"{k} {v:.3f}" for k, v in summary["auroc_by_cell_type"].items() if v is not None
        )
        table.add_row("AUROC", f"{summary['auroc']:.3f} (by cell type: {by_type})")
        table.add_row(
            "alarm rate",
            f"{summary['alarm_rate_functional']:.1%} of {summary['functional']} functional, "
            f"{summary['alarm_rate_defective']:.1%} of {summary['defective']} defective cells",
        )
    else:
        table.add_row("AUROC", "n/a (no labels for this source)")
    table.add_row("outputs", f"{summary['out']}/results.jsonl, alarms.jsonl, heatmaps/")
    console.print(table)
