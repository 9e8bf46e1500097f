"""One (class, K) of the side-by-side benchmark: decode, run the peer, run adqc, score rows."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer import adqc_side, exchange, scoring
from benchmarks.peer.cases import capped, load_bench_class, shots_label

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = REPO_ROOT / "benchmarks" / "anomalib" / "run_anomalib.py"
PEER_PYTHON = REPO_ROOT / ".cache" / "anomalib-venv" / "bin" / "python"
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


class PeerError(RuntimeError):
    """The anomalib side could not run; the message says how to fix it."""


@dataclass
class BenchOptions:
    shots: int
    image_size: int = 224
    features: list[str] = field(default_factory=lambda: ["raw", "adpretrain"])
    methods: list[str] = field(default_factory=lambda: ["featurenorm", "patchcore", "padim"])
    peer: bool = True
    adqc: bool = True
    peer_python: Path = PEER_PYTHON
    work_dir: Path = REPO_ROOT / ".cache" / "anomalib-bench"
    backbone: str = "mobilenet_v2"
    checkpoint: str | None = None
    checkpoint_for: dict[str, str] = field(default_factory=dict)  # class -> LODO checkpoint
    seed: int = 0
    max_test: int | None = None  # cap per class (stratified by label, seed 0)
    peer_models: tuple[str, ...] = ("patchcore", "padim")
    candidates: tuple[str, ...] | None = None  # None: every candidate of candidates.py
    bootstrap: int = 0  # paired bootstrap resamples of each adqc row vs anomalib PatchCore
    calibration_images: int = 0  # candidates: also calibrate on the next N train/good images


def peer_ready(python: Path = PEER_PYTHON) -> bool:
    """True when install.sh finished in the venv of ``python`` (its stamp file exists)."""
    return (Path(python).parent.parent / ".installed").is_file()


def peer_env() -> dict[str, str]:
    """The peer's environment: jemalloc preloaded when present (greedy coreset ~4x faster)."""
    env = dict(os.environ)
    if JEMALLOC.is_file() and "jemalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = f"{JEMALLOC} {env.get('LD_PRELOAD', '')}".strip()
    env.pop("PYTHONPATH", None)  # the peer venv must not see the product's packages
    return env


def run_peer(inputs: exchange.Inputs, folder: Path, opts: BenchOptions):
    """Write the inputs, run benchmarks/anomalib/run_anomalib.py in the peer venv, read back."""
    if not (Path(opts.peer_python).is_file() and peer_ready(opts.peer_python)):
        raise PeerError(
            f"no anomalib environment at {opts.peer_python}: build it with "
            "`make bench-anomalib-venv` (benchmarks/anomalib/install.sh)"
        )
    exchange.write_peer_inputs(inputs, folder)
    cmd = [str(opts.peer_python), str(PEER_SCRIPT), "--dir", str(folder), "--seed", str(opts.seed)]
    cmd += ["--models", ",".join(opts.peer_models)]
    log.info("peer: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=peer_env(), stdout=sys.stderr, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise PeerError(f"the anomalib run failed (exit {proc.returncode}): {' '.join(cmd)}")
    return exchange.read_peer_outputs(folder, len(inputs.bench_class.groups))


def kinds_for(class_name: str, seen: bool, opts: BenchOptions) -> tuple[list[str], str | None]:
    """Feature kinds for this class and its checkpoint; adpretrain needs an unseen class."""
    if class_name in opts.checkpoint_for:
        return opts.features, opts.checkpoint_for[class_name]
    if seen and ({"adpretrain", "candidate"} & set(opts.features)):
        drop = {"adpretrain"} if raw_candidates_only(opts) else {"adpretrain", "candidate"}
        return [k for k in opts.features if k not in drop], None
    return opts.features, opts.checkpoint


def raw_candidates_only(opts: BenchOptions) -> bool:
    """Whether every candidate asked for reads raw stride-8 features only (no projector, so a
    class the projector was pretrained on is still unseen by them)."""
    from benchmarks.peer.candidates import CANDIDATES, MEMBERS

    names = opts.candidates if opts.candidates is not None else tuple(CANDIDATES)
    return all(MEMBERS[m][0].startswith("stride8") for c in names for m in CANDIDATES[c])


def _paired(base, out, inputs: exchange.Inputs, opts: BenchOptions, metrics=None) -> dict:
    """Paired bootstrap (95 %) of ``out`` - ``base`` over test-image resamples
    (evaluation.significance); pixel metrics where both have maps and the class has masks."""
    from evaluation.significance import METRICS, paired_bootstrap

    have_maps = inputs.masks is not None and base.maps is not None and out.maps is not None
    a = {"scores": base.scores, "maps": base.maps if have_maps else None}
    b = {"scores": out.scores, "maps": out.maps if have_maps else None}
    masks = inputs.masks if have_maps else None
    metrics = metrics or METRICS  # the significance module's default: image and pixel AUROC
    return paired_bootstrap(a, b, inputs.labels, masks, opts.bootstrap, opts.seed, metrics)


def _two_labels(inputs: exchange.Inputs) -> bool:
    """Both normal and defective test images (else there is nothing to resample: deeppcb)."""
    return len(set(np.asarray(inputs.labels).tolist())) >= 2


def vs_peer(peer, out, inputs: exchange.Inputs, opts: BenchOptions) -> dict[str, Any]:
    """Paired bootstrap (95 % interval) of adqc row - anomalib PatchCore, image and pixel
    AUROC, resampling test images (evaluation.significance)."""
    return _paired(peer, out, inputs, opts) if _two_labels(inputs) else {}


#: the baseline each adpretrain row is compared with (FeatureNorm refuses raw features)
BASELINE = {"featurenorm": "residual", "patchcore": "raw", "padim": "raw"}
ALL_METRICS = ("image_auroc", "pixel_auroc", "aupro")
#: the candidate the others are compared with (the shipped default)
DEFAULT_CANDIDATE = "s8-patchcore"


def vs_baseline(outs: list, inputs: exchange.Inputs, opts: BenchOptions) -> dict[str, Any]:
    """Per adpretrain row's method: paired bootstrap (95 %) of adpretrain - its baseline
    (``BASELINE``) on image AUROC, and pixel AUROC and AUPRO where masks exist (goal 2 of issue
    11: every miss with its size and interval)."""
    if not _two_labels(inputs):
        return {}
    by_key = {(o.features, o.method): o for o in outs}
    found: dict[str, Any] = {}
    for method, base in BASELINE.items():
        ours, theirs = by_key.get(("adpretrain", method)), by_key.get((base, method))
        if ours is None or theirs is None:
            continue
        found[method] = {"baseline": base, **_paired(theirs, ours, inputs, opts, ALL_METRICS)}
    return found


def vs_default(outs: list, inputs: exchange.Inputs, opts: BenchOptions) -> dict[str, Any]:
    """Per candidate row other than the default: paired bootstrap (95 %) of candidate -
    ``DEFAULT_CANDIDATE`` in the same run (image AUROC, pixel AUROC, AUPRO)."""
    cands = {o.method: o for o in outs if o.features == "candidate"}
    default = cands.get(DEFAULT_CANDIDATE)
    if default is None or not _two_labels(inputs):
        return {}
    return {
        name: _paired(default, out, inputs, opts, ALL_METRICS)
        for name, out in cands.items()
        if name != DEFAULT_CANDIDATE
    }


def bench_class(spec: str, opts: BenchOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows of one class at K = opts.shots, and a note on what ran."""
    t0 = time.perf_counter()
    bc = load_bench_class(spec, opts.shots)
    n_all = len(bc.test)
    bc = capped(bc, opts.max_test)
    inputs = exchange.prepare(bc, opts.shots, opts.image_size)
    decode_s = time.perf_counter() - t0
    sizes = [len(g.test) for g in bc.groups]
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {
        "class": bc.name,
        "shots": shots_label(opts.shots),
        "groups": [g.name for g in bc.groups],
        "notes": list(bc.notes)
        + (
            [f"test set capped at {len(bc.test)} of {n_all} images (stratified, seed 0)"]
            if len(bc.test) < n_all
            else []
        ),
        "decode_s": round(decode_s, 2),
    }
    common = {"class_name": bc.name, "shots": shots_label(opts.shots), "labels": inputs.labels}
    peer_patchcore = None
    if opts.peer:
        folder = opts.work_dir / bc.name.replace("/", "_") / f"k{opts.shots}"
        outputs, report = run_peer(inputs, folder, opts)
        info["peer"] = {k: v for k, v in report.items() if k != "models"}
        peer_patchcore = outputs.get("patchcore")
        for name, out in outputs.items():
            m = scoring.metrics_of(out.scores, inputs.labels, out.maps, inputs.masks, sizes)
            extra = {"detector": {k: v for k, v in out.info.items() if k != "seconds"}}
            rows.append(
                scoring.make_row(
                    source="anomalib",
                    features="-",
                    method=name,
                    metrics=m,
                    seconds=out.seconds,
                    extra=extra,
                    **common,
                )
            )
    if opts.adqc:
        kinds, checkpoint = kinds_for(bc.name, bc.seen_in_pretraining, opts)
        if kinds != opts.features:
            info["notes"].append(
                f"{bc.name} was in the shipped projector's pretraining set: adpretrain rows "
                "need a leave-one-dataset-out checkpoint (--checkpoint-for CLASS=PATH); skipped"
            )
        want_candidates = "candidate" in kinds
        kinds = [k for k in kinds if k != "candidate"]
        lm = adqc_side.load(opts.backbone, checkpoint, kinds + ["adpretrain"] * want_candidates)
        outs = adqc_side.run(lm, inputs, kinds, opts.methods) if kinds else []
        baseline = vs_baseline(outs, inputs, opts) if opts.bootstrap else {}
        if want_candidates:
            from benchmarks.peer import candidates

            chosen = {
                c: m
                for c, m in candidates.CANDIDATES.items()
                if opts.candidates is None or c in opts.candidates
            }
            held = None
            if opts.calibration_images:
                held = candidates.calibration_images(inputs, opts.calibration_images)
            from inference.stride8 import shared_stride8

            aux = candidates.aux_model()
            outs += candidates.run(lm, aux, inputs, chosen, held, shared_stride8())
        against_default = vs_default(outs, inputs, opts) if opts.bootstrap else {}
        for out in outs:
            m = scoring.metrics_of(out.scores, inputs.labels, out.maps, inputs.masks, sizes)
            extra = {
                "detector": out.info,
                "backbone": opts.backbone,
                "checkpoint": lm.checkpoint or None,
                "calibrated": scoring.operating_point(
                    out.scores, inputs.labels, out.info.get("group_thresholds", []), sizes
                ),
            }
            held_thresholds = out.info.get("held_out_thresholds") or []
            if held_thresholds:
                extra["calibrated_held_out"] = scoring.operating_point(
                    out.scores, inputs.labels, held_thresholds, sizes
                )
            if opts.bootstrap and peer_patchcore is not None:
                extra["vs_anomalib_patchcore"] = vs_peer(peer_patchcore, out, inputs, opts)
            if out.features == "adpretrain" and out.method in baseline:
                extra["vs_baseline"] = baseline[out.method]
            if out.method in against_default:
                extra["vs_default"] = against_default[out.method]
            rows.append(
                scoring.make_row(
                    source="adqc",
                    features=out.features,
                    method=out.method,
                    metrics=m,
                    seconds=out.seconds,
                    extra=extra,
                    **common,
                )
            )
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return rows, info
