"""Default-detector candidates of issue 11 (docs/BACKBONES.md, "Choosing the default").

Members, each fitted on the K references of a group exactly as ``adqc eval`` fits a detector:

- ``s8-patchcore``: PatchCore on raw MobileNetV2 features at anomalib's taps (torchvision
  ``features.6`` + ``features.13``, strides 8 and 16, a 28x28 grid at 224): 3x3 average,
  levels upsampled to 28x28 and concatenated (128 channels), full memory bank below 10k patches
  (no coreset at few-shot);
- ``s8-patchcore@256`` / ``@320``: the same member on images resized from their files to
  256 / 320 px (its own ``stride8@S`` source); maps are resized to the peer's size for the
  pixel metrics, image scores are the maxima of the maps at S;
- ``adp-featurenorm`` / ``adp-padim`` / ``adp-patchcore``: the shipped projector's features
  (``features.10/13/17``) with adqc's detectors.

Candidates are single members or ensembles (``pretrain.detectors.ensemble``: members' maps as
z-scores of their own leave-one-out normal image scores, averaged), exactly as the product's
presets score them (a single member keeps its raw scores). Every candidate's threshold
is calibrated from the combined leave-one-out scores of the references, as onboarding would.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.peer import adqc_side
from benchmarks.peer.adqc_side import BATCH, AdqcOutput
from benchmarks.peer.choose import input_size
from benchmarks.peer.exchange import Inputs, load_batch
from evaluation.datasets import Category
from evaluation.runner import LoadedModel, RawFeatures, feature_set
from inference.calibration import DEFAULT_TARGET_FAR, CalibrationError, calibrate
from inference.stride8 import Stride8Source, in_batches, shared_stride8
from pretrain.data.folders import Sample
from pretrain.detectors.ensemble import ensemble_scores
from pretrain.detectors.leave_one_out import calibration_subset

AUX_TAPS = (6, 13)
#: member -> (feature source, row method of adqc_side.score_features)
MEMBERS: dict[str, tuple[str, str]] = {
    "s8-patchcore": ("stride8", "patchcore_concat"),
    "s8-patchcore-coreset": ("stride8", "patchcore_concat_coreset"),
    "s8-patchcore-local": ("stride8", "patchcore_concat_local"),
    "s8-patchcore@256": ("stride8@256", "patchcore_concat_256"),
    "s8-patchcore@320": ("stride8@320", "patchcore_concat_320"),
    "adp-featurenorm": ("adpretrain", "featurenorm"),
    "adp-padim": ("adpretrain", "padim"),
    "adp-patchcore": ("adpretrain", "patchcore"),
}
#: candidate -> members (order fixed before the runs, docs/BACKBONES.md)
CANDIDATES: dict[str, tuple[str, ...]] = {
    "s8-patchcore": ("s8-patchcore",),
    "s8-patchcore+adp-featurenorm": ("s8-patchcore", "adp-featurenorm"),
    "s8-patchcore+adp-padim": ("s8-patchcore", "adp-padim"),
    "s8-patchcore+adp-featurenorm+adp-padim": ("s8-patchcore", "adp-featurenorm", "adp-padim"),
    "adp-featurenorm+adp-padim": ("adp-featurenorm", "adp-padim"),
    # speed variant of the default (issue 12; docs/PERFORMANCE.md), not part of the first screen
    "s8-patchcore-coreset": ("s8-patchcore-coreset",),
    # position-aware matching (issue 11, section 3), measured on every class
    "s8-patchcore-local": ("s8-patchcore-local",),
    # the default's input size (issue 11, section 2)
    "s8-patchcore@256": ("s8-patchcore@256",),
    "s8-patchcore@320": ("s8-patchcore@320",),
}


def shipped_candidate() -> str:
    """The candidate that is the default preset as `adqc product add` builds it."""
    from pretrain.detectors.ensemble import S8_BASE_SIZE, preset_config

    size = preset_config("s8-patchcore").image_size or S8_BASE_SIZE
    return "s8-patchcore" if size == S8_BASE_SIZE else f"s8-patchcore@{size}"


def decoded(inputs: Inputs, g: int, size: int, held_paths: list) -> tuple[np.ndarray, np.ndarray]:
    """Group ``g``'s references and test images (then ``held_paths``) at ``size`` px."""
    if size == inputs.image_size:
        raise ValueError("decoded() is for other sizes; use inputs.refs / inputs.test")
    group = inputs.bench_class.groups[g]
    refs = load_batch(group.references(inputs.shots), size)
    paths = [s.path for s in group.test] + list(held_paths)
    return refs, load_batch(paths, size)


def maps_at(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[N,S,S] maps resized bilinearly to ``size`` (unchanged when already that size)."""
    if maps.shape[-1] == size:
        return maps
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")[:, 0]


def aux_model() -> LoadedModel:
    """MobileNetV2 (the shipped ImageNet weights) tapped at anomalib PatchCore's layers."""
    from pretrain.backbones.mobilenet_variants import tapped_mobilenet_v2
    from pretrain.model import FeatureModel

    return LoadedModel(FeatureModel(tapped_mobilenet_v2(AUX_TAPS), None), {})


def _threshold(scores: torch.Tensor, method: str = "leave-one-out") -> float:
    try:
        return calibrate(scores.double().tolist(), DEFAULT_TARGET_FAR, method).threshold
    except CalibrationError:
        return float("nan")


def calibration_images(inputs: Inputs, n: int) -> list[np.ndarray]:
    """Per group the next ``n`` train/good images after the K references (fewer when the
    group has fewer), decoded like the references: the `--calibration-images` of onboarding."""
    out = []
    for group in inputs.bench_class.groups:
        paths = group.train_good[inputs.shots : inputs.shots + n]
        size = inputs.image_size
        out.append(load_batch(paths, size) if paths else np.empty((0, size, size, 3), np.uint8))
    return out


def run(
    lm: LoadedModel,
    aux: LoadedModel,
    inputs: Inputs,
    candidates: dict[str, tuple[str, ...]] = CANDIDATES,
    held_out: list[np.ndarray] | None = None,
    stride8: Stride8Source | None = None,
) -> list[AdqcOutput]:
    """Every candidate's rows on ``inputs`` (features "candidate"), groups concatenated.

    ``held_out``: per group normal images that are neither references nor test images; each
    candidate then also gets the threshold onboarding sets from them (``held_out_thresholds``).
    ``stride8``: the product's extractor (``inference.stride8``, ONNX Runtime) for the stride-8
    source, so that rows time what ships; default: ``aux`` in torch.
    """
    bc = inputs.bench_class
    needed = sorted({m for members in candidates.values() for m in members})
    sources = {MEMBERS[m][0] for m in needed}
    scores: dict[str, list[np.ndarray]] = {c: [] for c in candidates}
    maps: dict[str, list[np.ndarray]] = {c: [] for c in candidates}
    seconds = dict.fromkeys(candidates, 0.0)
    thresholds: dict[str, list[float]] = {c: [] for c in candidates}
    held_thresholds: dict[str, list[float]] = {c: [] for c in candidates}
    # every size's extractor is built (and its ONNX graph exported) before any row is timed
    extractors: dict[int, Stride8Source] = {}
    if stride8 is not None:
        for source in sources:
            size = input_size(source, inputs.image_size)
            if source.startswith("stride8"):
                extractors[size] = stride8 if size == inputs.image_size else shared_stride8(size)
    for g, group in enumerate(bc.groups):
        n_test = len(inputs.test[g])
        extra = held_out[g] if held_out is not None else inputs.test[g][:0]
        test_images = np.concatenate([inputs.test[g], extra]) if len(extra) else inputs.test[g]
        # the held-out normals ride along with the test images and are split off again
        held_paths = group.train_good[inputs.shots : inputs.shots + len(extra)]
        samples = list(group.test) + [Sample(p, 0, "held-out") for p in held_paths]
        refs = group.references(inputs.shots)
        member_out, member_s, source_s = {}, {}, {}
        for source in sorted(sources):
            is_s8 = source.startswith("stride8")
            model = aux if is_s8 else lm
            size = input_size(source, inputs.image_size)
            ref_images, images = inputs.refs[g], test_images
            if size != inputs.image_size:  # decoding is not timed, as on the peer side
                ref_images, images = decoded(inputs, g, size, held_paths)
            t0 = time.perf_counter()
            if is_s8 and stride8 is not None:
                train = in_batches(extractors[size], ref_images, BATCH)
                test = in_batches(extractors[size], images, BATCH)
            else:
                train = adqc_side._backbone(model, ref_images)
                test = adqc_side._backbone(model, images)
            raw = RawFeatures(
                category=Category(bc.name, bc.spec, refs, group.test),
                image_size=size,
                train_paths=refs,
                train=train,
                test=test,
                samples=samples,
                masks=None,
                seconds=time.perf_counter() - t0,
            )
            kind = "raw" if is_s8 else source
            fs = feature_set(model, raw, kind, inputs.shots or None, show_progress=False)
            source_s[source] = raw.seconds + fs.seconds
            for m in needed:
                if MEMBERS[m][0] != source:
                    continue
                # as fit_ensemble calibrates the presets: at most 64 references at full shot
                loo = calibration_subset(len(inputs.refs[g]))
                out = adqc_side.score_features(fs, MEMBERS[m][1], True, loo)
                member_out[m] = out
                member_s[m] = out.fit_seconds + out.score_seconds
        for c, members in candidates.items():
            all_maps = [torch.from_numpy(member_out[m].maps) for m in members]
            test_maps = [m[:n_test] for m in all_maps]
            loo_maps = [member_out[m].loo_maps for m in members]
            # exactly the product's presets (a single member keeps its raw scores)
            c_maps, c_scores, c_loo = ensemble_scores(test_maps, loo_maps)
            scores[c].append(c_scores.double().numpy())
            if inputs.masks is not None:  # the pixel metrics at the peer's size
                maps[c].append(maps_at(c_maps, inputs.image_size).numpy())
            thresholds[c].append(_threshold(c_loo))
            if len(extra) >= 2:
                _, held_scores, _ = ensemble_scores([m[n_test:] for m in all_maps], loo_maps)
                held_thresholds[c].append(_threshold(held_scores, "held-out"))
            elif held_out is not None:
                held_thresholds[c].append(float("nan"))
            used = {MEMBERS[m][0] for m in members}
            seconds[c] += sum(source_s[s] for s in used) + sum(member_s[m] for m in members)
    info: dict[str, Any] = {"aux_taps": list(AUX_TAPS)}
    return [
        AdqcOutput(
            "candidate",
            c,
            np.concatenate(scores[c]),
            np.concatenate(maps[c]) if maps[c] else None,
            seconds[c],
            {
                **info,
                "members": list(candidates[c]),
                "group_thresholds": thresholds[c],
                "held_out_thresholds": held_thresholds[c],
                "held_out_images": [len(h) for h in held_out] if held_out is not None else [],
            },
        )
        for c in candidates
    ]
