"""Image AUROC on mvtec_ad/bottle through the LocalEngine, torch vs onnxruntime runtime.

Same 8-shot record per detector, same 83 test images, scores through the serving path
(``engine.features`` -> ``maps_and_scores``). Run from the repository root:
``.venv/bin/python docs/perf/auroc_runtime.py`` -> docs/perf/auroc-runtime.json.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from inference.engines.local import LocalEngine
from inference.onboarding import build_record, find_images, load_images
from inference.scorer import detector_for, maps_and_scores


def bottle_inputs() -> tuple[np.ndarray, list[Path], np.ndarray, np.ndarray]:
    """mvtec_ad/bottle at 224 px: 8 shots, the test paths, their labels (1 = defective) and
    images."""
    root = Path("../shared/datasets/mvtec_ad/bottle")
    shots = load_images(find_images(root / "train/good")[:8], 224)
    tests = sorted((root / "test").glob("*/*.png"))
    labels = np.array([0 if p.parent.name == "good" else 1 for p in tests])
    return shots, tests, labels, load_images(tests, 224)


def compare_engines(engines: dict, shots, imgs, labels, out: dict) -> None:
    """Per detector, a record built on the first engine and scored through each engine's
    serving path: image AUROC, seconds and scores per engine into ``out``, and the largest
    relative score difference of the second engine against the first."""
    (first, base), (second, _) = list(engines.items())[:2]
    for det in ("featurenorm", "patchcore"):
        record = build_record(base, "bottle", shots, detector=det)
        detector = detector_for(record)
        for name, eng in engines.items():
            start = time.perf_counter()
            parts = [
                maps_and_scores(detector, eng.features(imgs[i : i + 8], record), 224)[1]
                for i in range(0, len(imgs), 8)
            ]
            scores = np.concatenate(parts)
            out[f"{det}_{name}_image_auroc"] = round(float(roc_auc_score(labels, scores)), 4)
            out[f"{det}_{name}_s"] = round(time.perf_counter() - start, 1)
            out[f"{det}_{name}_scores"] = [round(float(v), 5) for v in scores]
        a = np.array(out[f"{det}_{first}_scores"])
        b = np.array(out[f"{det}_{second}_scores"])
        out[f"{det}_max_rel_score_diff"] = float(np.max(np.abs(b - a) / np.abs(a)))


def main() -> None:
    torch.set_num_threads(1)
    t_eng = LocalEngine(runtime="torch")
    o_eng = LocalEngine(model=t_eng.model, runtime="onnxruntime")
    shots, tests, labels, imgs = bottle_inputs()
    out: dict = {
        "command": ".venv/bin/python docs/perf/auroc_runtime.py",
        "load_average_start": os.getloadavg(),
        "n_test": len(tests),
    }
    compare_engines({"torch": t_eng, "onnxruntime": o_eng}, shots, imgs, labels, out)
    out["load_average_end"] = os.getloadavg()
    Path("docs/perf/auroc-runtime.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
