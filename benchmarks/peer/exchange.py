"""The arrays both sides score: decoded once by adqc, handed to the peer as uint8.

``prepare`` decodes every reference and test image of a class with adqc's own loader (PIL,
bilinear resize to S x S, no crop; masks nearest-neighbour), so anomalib and adqc see the same
pixels bit for bit. The peer gets ``inputs.npz`` (``refs_<g>`` [K,S,S,3] and ``test_<g>``
[N,S,S,3] uint8 per group g) and ``inputs.json`` (normalisation, group names, K, whether maps
are wanted); it writes ``peer.npz`` (``<model>_scores_<g>`` [N] and, when maps are wanted,
``<model>_maps_<g>`` [N,S,S] float32: anomalib's raw outputs, never normalised or thresholded)
and ``peer.json`` (timings, versions, the weight check). Masks never leave adqc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer.cases import BenchClass
from evaluation.datasets import all_defects_masked
from pretrain.data.folders import load_sample
from pretrain.preprocess import load_batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Inputs:
    """Decoded images of one class at K shots (group order = ``BenchClass.groups``)."""

    bench_class: BenchClass
    shots: int
    image_size: int
    refs: list[np.ndarray]  # per group uint8 [K,S,S,3]
    test: list[np.ndarray]  # per group uint8 [N_g,S,S,3]
    labels: np.ndarray  # [N] over all groups
    masks: np.ndarray | None  # [N,S,S] bool when every defective test image has a mask

    @property
    def n_test(self) -> int:
        return int(self.labels.size)


def prepare(bench_class: BenchClass, shots: int, image_size: int) -> Inputs:
    """Decode the first ``shots`` references and every test image of each group."""
    refs, test, masks = [], [], []
    for group in bench_class.groups:
        refs.append(load_batch(group.references(shots), image_size))
        loaded = [load_sample(s.path, s.mask, image_size) for s in group.test]
        test.append(np.stack([im for im, _ in loaded]))
        masks += [m.astype(bool) for _, m in loaded]
    samples = bench_class.test
    labels = np.array([s.label for s in samples], dtype=np.int64)
    has_masks = all_defects_masked(samples)
    return Inputs(
        bench_class,
        shots,
        image_size,
        refs,
        test,
        labels,
        np.stack(masks) if has_masks else None,
    )


def write_peer_inputs(inputs: Inputs, folder: Path) -> tuple[Path, Path]:
    """``inputs.npz`` + ``inputs.json`` for the peer script; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for g, (r, t) in enumerate(zip(inputs.refs, inputs.test, strict=True)):
        arrays[f"refs_{g}"] = r
        arrays[f"test_{g}"] = t
    npz, meta = folder / "inputs.npz", folder / "inputs.json"
    np.savez(npz, **arrays)
    meta.write_text(
        json.dumps(
            {
                "class": inputs.bench_class.name,
                "shots": inputs.shots,
                "image_size": inputs.image_size,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
                "groups": [g.name for g in inputs.bench_class.groups],
                "want_maps": inputs.masks is not None,
            },
            indent=2,
        )
    )
    return npz, meta


@dataclass
class PeerOutput:
    """One anomalib model's raw outputs over all groups, concatenated in group order."""

    model: str
    scores: np.ndarray  # [N]
    maps: np.ndarray | None  # [N,S,S] float32
    seconds: float  # fit + test forward, all groups (decode excluded: the arrays are given)
    info: dict[str, Any]


def read_peer_outputs(folder: Path, n_groups: int) -> tuple[dict[str, PeerOutput], dict]:
    """Parse ``peer.npz`` / ``peer.json``; ValueError naming what is missing."""
    report = json.loads((folder / "peer.json").read_text())
    out: dict[str, PeerOutput] = {}
    with np.load(folder / "peer.npz") as data:
        for model, info in report["models"].items():
            keys = [f"{model}_scores_{g}" for g in range(n_groups)]
            missing = [k for k in keys if k not in data]
            if missing:
                raise ValueError(f"peer output {folder / 'peer.npz'} lacks {missing}")
            scores = np.concatenate([data[k] for k in keys]).astype(np.float64)
            maps = None
            if f"{model}_maps_0" in data:
                maps = np.concatenate([data[f"{model}_maps_{g}"] for g in range(n_groups)])
            out[model] = PeerOutput(model, scores, maps, float(info["seconds"]), info)
    return out, report
