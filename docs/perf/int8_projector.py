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
from auroc_runtime import bottle_inputs, compare_engines  # this folder's AUROC comparison

from inference.engines.local import LocalEngine
from inference.engines.onnx_runtime import OnnxFeatureRunner
from inference.onboarding import build_record
from pretrain.residual import pool_residuals

REPEATS = 9


def main() -> None:
    fp32 = LocalEngine()
    assert fp32.runtime == "onnxruntime", fp32.runtime
    int8 = LocalEngine(model=fp32.model)
    int8._onnx = OnnxFeatureRunner(fp32.model, projector_int8=True)
    shots, tests, labels, imgs = bottle_inputs()
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
    compare_engines({"fp32": fp32, "int8": int8}, shots, imgs, labels, out)
    out["load_average_end"] = os.getloadavg()
    Path("docs/perf/int8-projector.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_scores")}, indent=1))


if __name__ == "__main__":
    main()
