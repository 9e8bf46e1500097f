"""int8 dynamic quantisation of the projector in the ONNX Runtime path: speed and AUROC.

One run, one process: the shipped checkpoint's ONNX Runtime engine (float32 projector) and
the same engine with ``OnnxFeatureRunner(projector_int8=True)`` (MatMul/Gemm weights int8,
activations quantised per call). Timing: the projector alone and ``engine.features`` at
batch 8, interleaved (fp32, int8, fp32, ...), median of ``REPEATS``. AUROC: mvtec_ad/bottle,
8 shots, all 83 test images, FeatureNorm and PatchCore through the serving path
(``engine.features`` -> ``maps_and_scores``), as docs/perf/auroc_runtime.py.
Run from the repository root: ``.venv/bin/python docs/perf/int8_projector.py``
-> docs/perf/int8-projector.json.
"""

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from inference.engines.local import LocalEngine
from inference.engines.onnx_runtime import OnnxFeatureRunner
from inference.onboarding import build_record, find_images, load_images
from inference.scorer import detector_for, maps_and_scores
from pretrain.residual import pool_residuals

REPEATS = 9


def main() -> None:
    root = Path("../shared/datasets/mvtec_ad/bottle")
    fp32 = LocalEngine()
    assert fp32.runtime == "onnxruntime", fp32.runtime
    int8 = LocalEngine(model=fp32.model)
    int8._onnx = OnnxFeatureRunner(fp32.model, projector_int8=True)
    shots = load_images(find_images(root / "train/good")[:8], 224)
    tests = sorted((root / "test").glob("*/*.png"))
    labels = np.array([0 if p.parent.name == "good" else 1 for p in tests])
    imgs = load_images(tests, 224)
    out: dict = {
        "command": ".venv/bin/python docs/perf/int8_projector.py",
        "load_average_start": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "n_test": len(tests),
        "projector_files": [str(fp32._onnx.paths[1].name), str(int8._onnx.paths[1].name)],
        "projector_mb": [
            round(p.paths[1].stat().st_size / 1e6, 2) for p in (fp32._onnx, int8._onnx)
        ],  # fmt: skip
    }
    record = build_record(fp32, "bottle", shots, detector="featurenorm")
    batch = imgs[:8]
    with torch.inference_mode():
        x = fp32.model.preprocess(torch.from_numpy(batch))
        residuals = pool_residuals(fp32._onnx.raw(x), fp32.pool(record), fp32.model.chunk)
    timings: dict[str, list[float]] = {k: [] for k in ("proj_fp32", "proj_int8", "feat_fp32",
                                                         "feat_int8")}  # fmt: skip
    for eng in (fp32, int8):  # warm-up
        eng._onnx.project(residuals)
        eng.features(batch, record)
    for _ in range(REPEATS):
        for name, eng in (("fp32", fp32), ("int8", int8)):
            t0 = time.perf_counter()
            eng._onnx.project(residuals)
            timings[f"proj_{name}"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            eng.features(batch, record)
            timings[f"feat_{name}"].append((time.perf_counter() - t0) * 1000)
    for key, values in timings.items():
        out[f"{key}_ms_per_batch8"] = round(statistics.median(values), 2)
    f = out
    out["projector_speedup"] = round(f["proj_fp32_ms_per_batch8"] / f["proj_int8_ms_per_batch8"], 3)
    out["features_speedup"] = round(f["feat_fp32_ms_per_batch8"] / f["feat_int8_ms_per_batch8"], 3)
    a, b = fp32._onnx.project(residuals), int8._onnx.project(residuals)
    out["projector_max_abs_diff"] = float(
        max(np.abs(p - q).max() for p, q in zip(a, b, strict=True))
    )
    out["projector_max_abs"] = float(max(np.abs(p).max() for p in a))
    for det in ("featurenorm", "patchcore"):
        record = build_record(fp32, "bottle", shots, detector=det)
        detector = detector_for(record)
        for name, eng in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            parts = [
                maps_and_scores(detector, eng.features(imgs[i : i + 8], record), 224)[1]
                for i in range(0, len(imgs), 8)
            ]
            scores = np.concatenate(parts)
            out[f"{det}_{name}_image_auroc"] = round(float(roc_auc_score(labels, scores)), 4)
            out[f"{det}_{name}_s"] = round(time.perf_counter() - start, 1)
            out[f"{det}_{name}_scores"] = [round(float(v), 5) for v in scores]
        a = np.array(out[f"{det}_fp32_scores"])
        b = np.array(out[f"{det}_int8_scores"])
        out[f"{det}_max_rel_score_diff"] = float(np.max(np.abs(b - a) / np.abs(a)))
    out["load_average_end"] = os.getloadavg()
    Path("docs/perf/int8-projector.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_scores")}, indent=1))


if __name__ == "__main__":
    main()
