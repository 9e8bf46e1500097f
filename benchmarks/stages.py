"""``adqc bench stages``: every in-process model stage timed on its own, in one run.

Stages per batch size B (default 1, 8, 32): decode+resize (PNG bytes -> uint8 224x224),
normalise, backbone, residual 1-NN (against a K-shot pool), projector, detector (FeatureNorm,
and PatchCore against a K-shot memory bank), maps+regions (upsampling, level mean, Gaussian,
image score, connected components). Each figure is the median of ``repeats`` timed calls after
one warm-up; images/s = B / median seconds. Also:

- residual matching cost against the pool size (K = 1..64 shots) and PatchCore's nearest
  distance against memory-bank sizes (K-shot bank, full-shot coreset, full-shot bank), each in
  float32 and in chunked bfloat16 (float16 on CUDA) search, with the agreement of the two;
- optimisation variants at one batch size, each as a ratio to the baseline measured in the
  same run: channels-last backbone, ONNX Runtime backbone and projector, int8 dynamic
  quantisation of the projector's per-token linear layers, one vs all intra-op threads.

Everything is in-process (no servers); the JSON keeps the load average before and after, since
on a shared machine only the ratios inside one run are comparable.
"""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_DATA = Path("../shared/datasets/mvtec_ad/bottle")


@dataclass
class StagesConfig:
    """What ``adqc bench stages`` measures (``smoke()``: a seconds-long version for CI)."""

    batches: tuple[int, ...] = (1, 8, 32)
    repeats: int = 5
    shots: int = 8
    pool_shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    bank_sizes: tuple[int, ...] = (1568, 4096, 40960)
    #: the default detector's search per image: (queries, width, bank rows) at 256 px, K = 8
    default_bank: tuple[int, int, int] | None = (1024, 128, 8192)
    search_batch: int = 8
    variant_batch: int = 8
    variants: bool = True
    device: str = "cpu"
    data: str | None = str(DEFAULT_DATA)
    backbone: str = "mobilenet_v2"
    checkpoint: str | None = None
    threads: int = 0  # 0: torch's default
    profile: str | None = None  # write a torch.profiler summary of one batch here
    smoke: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke_config(cls, **overrides: Any) -> StagesConfig:
        base = cls(
            batches=(1, 2),
            repeats=1,
            shots=2,
            pool_shots=(1, 2),
            bank_sizes=(256,),
            default_bank=(64, 128, 512),
            search_batch=2,
            variant_batch=2,
            variants=False,
            smoke=True,
        )
        return replace(base, **overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_inputs(data: str | None, n_test: int, n_shots: int, seed: int = 0):
    """(test PNG bytes, shot PNG bytes, source): MVTec bottle files when ``data`` exists, else
    random 256x256 images encoded as PNG (the smoke test's input)."""
    root = Path(data) if data else None
    if root is not None and (root / "train" / "good").is_dir():
        shots = sorted((root / "train" / "good").glob("*.png"))[:n_shots]
        tests = sorted((root / "test").glob("*/*.png"))
        step = max(1, len(tests) // max(1, n_test))
        tests = tests[::step][:n_test]
        if len(shots) >= 1 and len(tests) >= 1:
            return [p.read_bytes() for p in tests], [p.read_bytes() for p in shots], str(root)
    rng = np.random.default_rng(seed)
    make = lambda: _png(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))  # noqa: E731
    return [make() for _ in range(n_test)], [make() for _ in range(n_shots)], "synthetic"


def _cycle(items: Sequence, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def _decoder(data: Sequence[bytes], size: int) -> Callable[[], np.ndarray]:
    """A call that decodes ``data`` (encoded images) and resizes each to ``size`` px."""
    from pretrain.preprocess import decode_image, resize_uint8

    return lambda: np.stack([resize_uint8(decode_image(b), size) for b in data])


def _search_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _stage_row(name: str, batch: int, seconds: float) -> dict:
    return {
        "stage": name,
        "batch": batch,
        "ms_per_batch": round(seconds * 1000, 3),
        "ms_per_image": round(seconds * 1000 / batch, 3),
        "images_per_s": round(batch / seconds, 2) if seconds > 0 else None,
    }


def measure_stages(model, images_png, shots_u8, cfg: StagesConfig) -> list[dict]:
    """Per batch size, every stage timed alone on the output of the previous one."""
    from inference.scorer import find_regions
    from pretrain.detectors import FeatureNorm, PatchCore, anomaly_map, image_scores
    from pretrain.residual import ReferencePool, pool_residuals

    device = model.device
    size = int(model.spec.image_size)
    with torch.inference_mode():
        shot_raw = model.raw(model.preprocess(torch.from_numpy(shots_u8)))
        pool = ReferencePool.from_features(shot_raw).to(device)
        patchcore = PatchCore()
        patchcore.fit([t.float().cpu() for t in model.projector(pool_residuals(shot_raw, pool))])
    featurenorm = FeatureNorm()
    rows = []
    for batch in cfg.batches:
        decode = _decoder(_cycle(images_png, batch), size)
        u8 = decode()
        rows.append(_stage_row("decode+resize", batch, time_call(decode, cfg.repeats, device)))
        with torch.inference_mode():
            t_u8 = torch.from_numpy(u8)
            x = model.preprocess(t_u8)
            raw = model.raw(x)
            res = pool_residuals(raw, pool, model.chunk)
            proj = model.projector(res)
            cpu_proj = [t.float().cpu() for t in proj]
            level_maps = featurenorm.score(cpu_proj)
            maps = anomaly_map(level_maps, size)
            threshold = float(np.quantile(maps.numpy(), 0.99))
            timed = {
                "normalise": lambda t_u8=t_u8: model.preprocess(t_u8),
                "backbone": lambda x=x: model.raw(x),
                "residual": lambda raw=raw: pool_residuals(raw, pool, model.chunk),
                "projector": lambda res=res: model.projector(res),
                "detector:featurenorm": lambda p=cpu_proj: featurenorm.score(p),
                "detector:patchcore": lambda p=cpu_proj: patchcore.score(p),
            }
            for name, fn in timed.items():
                rows.append(_stage_row(name, batch, time_call(fn, cfg.repeats, device)))

            def maps_regions(level_maps=level_maps, threshold=threshold):
                m = anomaly_map(level_maps, size)
                image_scores(m)
                arr = m.numpy()
                return [find_regions(a, threshold) for a in arr]

            rows.append(
                _stage_row("maps+regions", batch, time_call(maps_regions, cfg.repeats, device))
            )
        rows.append({"stage": "rss", "batch": batch, "peak_rss_mb": rss_mb()})
    return rows


#: the default detector's stages (``measure_default_stages``), in frame order
DEFAULT_STAGES = ("decode+resize", "stride-8 features", "detector", "regions")


def measure_default_stages(images_png, shots_png, cfg: StagesConfig) -> list[dict]:
    """The default detector's frame (``s8-patchcore`` at its input size, what `adqc product
    add` onboards and the scorer runs), per batch size: decode+resize, the stride-8 features
    (ONNX Runtime on CPU), the detector (embedding, nearest-neighbour search, maps) and the
    regions; each stage timed alone, plus their sum ``frame (s8-patchcore)``. CPU only."""
    from inference.scorer import find_regions
    from inference.stride8 import Stride8Features
    from pretrain.detectors import image_scores, make_detector
    from pretrain.detectors.ensemble import S8_INPUT_SIZE, s8_patchcore_config

    cpu = torch.device("cpu")
    size = S8_INPUT_SIZE
    extract = Stride8Features(image_size=size)
    config = s8_patchcore_config(size)
    detector = make_detector("patchcore", **config.model_dump(exclude={"method"}))
    shots = _decoder(shots_png[: cfg.shots], size)()
    with torch.inference_mode():
        detector.fit(extract(shots))
    rows = []
    for batch in cfg.batches:
        decode = _decoder(_cycle(images_png, batch), size)
        u8 = decode()
        with torch.inference_mode():
            features = extract(u8)
            maps = detector.anomaly_maps(features, size)
            threshold = float(np.quantile(maps.numpy(), 0.99))

            def score(features=features):
                m = detector.anomaly_maps(features, size)
                return m, image_scores(m)

            def regions(maps=maps.numpy(), threshold=threshold):
                return [find_regions(m, threshold) for m in maps]

            steps = (decode, lambda u8=u8: extract(u8), score, regions)
            parts = [
                _stage_row(name, batch, time_call(step, cfg.repeats, cpu))
                for name, step in zip(DEFAULT_STAGES, steps, strict=True)
            ]
        total = sum(r["ms_per_batch"] for r in parts) / 1000
        rows += [*parts, _stage_row("frame (s8-patchcore)", batch, total)]
        rows[-1]["limit_stage"] = max(parts, key=lambda r: r["ms_per_batch"])["stage"]
        rows[-1]["image_size"] = size
    return rows


def totals(rows: list[dict]) -> list[dict]:
    """Per batch: the engine (normalise..projector) and the whole path, as sums of stages."""
    engine = ("normalise", "backbone", "residual", "projector")
    path = (*engine, "decode+resize", "detector:featurenorm", "maps+regions")
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["stage"]: r for r in rows if r["batch"] == batch and "ms_per_batch" in r}
        for name, parts in (("engine", engine), ("frame (featurenorm)", path)):
            ms = sum(by[p]["ms_per_batch"] for p in parts if p in by)
            out.append(_stage_row(name, batch, ms / 1000))
        slowest = max((by[p] for p in path if p in by), key=lambda r: r["ms_per_batch"])
        out[-1]["limit_stage"] = slowest["stage"]
    return out


def measure_search(model, shots_u8, query_u8, cfg: StagesConfig) -> dict:
    """Residual 1-NN against K-shot pools and PatchCore nearest distances against bank sizes,
    float32 vs low precision (bf16 on CPU, fp16 on CUDA), with the agreement of the two, and
    (banks, CPU) the ONNX Runtime product the detectors use by default."""
    from pretrain.residual import ReferencePool, pool_residuals

    device = model.device
    low = _search_dtype(device)
    out: dict[str, Any] = {"low_precision": str(low).replace("torch.", ""), "residual": []}
    with torch.inference_mode():
        shot_raw = model.raw(model.preprocess(torch.from_numpy(shots_u8)))
        q_raw = model.raw(model.preprocess(torch.from_numpy(query_u8)))
        n_img = int(q_raw[0].shape[0])
        for k in cfg.pool_shots:
            idx = torch.arange(k) % shot_raw[0].shape[0]
            pool = ReferencePool.from_features([f[idx] for f in shot_raw]).to(device)
            fp32 = time_call(lambda p=pool: pool_residuals(q_raw, p), cfg.repeats, device)
            pool.normed_as(low)  # cast once, as a serving pool would keep it
            half = time_call(
                lambda p=pool: pool_residuals(q_raw, p, search_dtype=low), cfg.repeats, device
            )
            a = pool_residuals(q_raw, pool)
            b = pool_residuals(q_raw, pool, search_dtype=low)
            same = [float((x == y).all(dim=1).float().mean()) for x, y in zip(a, b, strict=True)]
            out["residual"].append(
                {
                    "shots": k,
                    "pool_patches": list(pool.sizes),
                    "fp32_ms_per_image": round(fp32 * 1000 / n_img, 3),
                    "low_ms_per_image": round(half * 1000 / n_img, 3),
                    "speedup": round(fp32 / half, 2),
                    "same_neighbour_fraction": [round(s, 4) for s in same],
                }
            )
        g = torch.Generator().manual_seed(0)
        shapes = [(n_img * 196, 320, m) for m in cfg.bank_sizes]  # the projector path's
        if cfg.default_bank:
            q_per_image, dim, m = cfg.default_bank
            shapes.append((n_img * q_per_image, dim, m))
        out["bank"] = [_bank_row(q, d, m, n_img, low, g, cfg, device) for q, d, m in shapes]
    return out


def _bank_row(
    n_queries: int,
    dim: int,
    bank_rows: int,
    n_img: int,
    low: torch.dtype,
    g: torch.Generator,
    cfg: StagesConfig,
    device: torch.device,
) -> dict[str, Any]:
    """PatchCore's nearest distance against one bank: torch float32, torch in ``low``
    precision, and (CPU) the ONNX Runtime product ``nearest_distances`` picks by default."""
    from pretrain.detectors import onnx_search
    from pretrain.detectors.components import nearest_distances

    queries = torch.randn(n_queries, dim, generator=g).abs().to(device)
    bank = torch.randn(bank_rows, dim, generator=g).abs().to(device)

    def timed(**kw: Any) -> float:
        return time_call(lambda: nearest_distances(queries, bank, **kw), cfg.repeats, device)

    fp32 = timed(runtime="torch")
    half = timed(runtime="torch", search_dtype=low)
    d32 = nearest_distances(queries, bank, runtime="torch")
    dlo = nearest_distances(queries, bank, runtime="torch", search_dtype=low)
    row: dict[str, Any] = {
        "bank_size": bank_rows,
        "dim": dim,
        "queries": n_queries,
        "fp32_ms_per_image": round(fp32 * 1000 / n_img, 3),
        "low_ms_per_image": round(half * 1000 / n_img, 3),
        "speedup": round(fp32 / half, 2),
        "max_rel_error": round(float(((dlo - d32).abs() / d32).max()), 5),
    }
    if device.type == "cpu" and onnx_search.session(torch.get_num_threads()) is not None:
        ort = timed(runtime="onnxruntime")
        dort = nearest_distances(queries, bank, runtime="onnxruntime")
        row["onnxruntime_ms_per_image"] = round(ort * 1000 / n_img, 3)
        row["onnxruntime_speedup"] = round(fp32 / ort, 2)
        row["onnxruntime_max_abs_diff"] = float((dort - d32).abs().max())
    return row


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


QUANTISED_LAYERS = ("q_proj", "out_proj", "fc1", "fc2")


def quantize_projector(projector: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantisation of the per-token linear layers (q, out, fc1, fc2); keys and
    values are computed once from the float reference tokens, so their layers stay float."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    names = {
        name
        for name, mod in projector.named_modules()
        if isinstance(mod, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in ("q_proj", "out_proj", "fc1", "fc2")
    }
    return quantize_dynamic(copy.deepcopy(projector), {n: default_dynamic_qconfig for n in names})


def measure_variants(model, images_u8: np.ndarray, pool, cfg: StagesConfig) -> list[dict]:
    """Candidate optimisations, each against the baseline of the same stage in this run, with
    the largest absolute difference of its output from the baseline's."""
    from deploy.export import BackboneGraph, ProjectorGraph
    from pretrain.residual import pool_residuals

    device = model.device
    rows: list[dict] = []
    batch = images_u8.shape[0]
    threads = torch.get_num_threads()

    def row(stage, variant, base_s, var_s, max_abs_diff, note=""):
        rows.append(
            {
                "stage": stage,
                "variant": variant,
                "batch": batch,
                "baseline_ms": round(base_s * 1000, 2),
                "variant_ms": round(var_s * 1000, 2),
                "speedup": round(base_s / var_s, 3),
                "max_abs_diff": max_abs_diff,
                "note": note,
            }
        )

    with torch.inference_mode():
        x = model.preprocess(torch.from_numpy(images_u8))
        raw = model.raw(x)
        res = pool_residuals(raw, pool, model.chunk)
        proj = model.projector(res)
        base_bb = time_call(lambda: model.raw(x), cfg.repeats, device)
        base_pj = time_call(lambda: model.projector(res), cfg.repeats, device)

        cl = copy.deepcopy(model.backbone).to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        t = time_call(lambda: cl(xc), cfg.repeats, device)
        diff = max(float((a - b).abs().max()) for a, b in zip(cl(xc), raw, strict=True))
        row("backbone", "channels_last", base_bb, t, diff)

        if threads > 1:
            torch.set_num_threads(1)
            try:
                t = time_call(lambda: model.raw(x), cfg.repeats, device)
                row("backbone", "1 intra-op thread", base_bb, t, 0.0, f"default {threads}")
                t = time_call(lambda: model.projector(res), cfg.repeats, device)
                row("projector", "1 intra-op thread", base_pj, t, 0.0, f"default {threads}")
            finally:
                torch.set_num_threads(threads)

        if device.type == "cpu":
            qproj = quantize_projector(model.projector)
            t = time_call(lambda: qproj(res), cfg.repeats, device)
            diff = max(float((a - b).abs().max()) for a, b in zip(qproj(res), proj, strict=True))
            row("projector", "int8 dynamic (q/out/fc1/fc2)", base_pj, t, diff)

    if device.type == "cpu":
        with tempfile.TemporaryDirectory(prefix="adqc-stages-") as tmp:
            bb_path, pj_path = Path(tmp) / "backbone.onnx", Path(tmp) / "projector.onnx"
            names = [f"l{i}" for i in range(len(raw))]
            rnames = [f"r{i}" for i in range(len(res))]
            with torch.no_grad():
                torch.onnx.export(
                    BackboneGraph(model.backbone).eval(), (x,), str(bb_path),
                    input_names=["input"], output_names=names,
                    dynamic_axes={n: {0: "b"} for n in ["input", *names]},
                    opset_version=17, dynamo=False,
                )  # fmt: skip
                torch.onnx.export(
                    ProjectorGraph(model.projector).eval(), tuple(res), str(pj_path),
                    input_names=rnames, output_names=names,
                    dynamic_axes={n: {0: "b"} for n in [*names, *rnames]},
                    opset_version=17, dynamo=False,
                )  # fmt: skip
            sess = _ort_session(bb_path, threads)
            feed = {"input": x.numpy()}
            t = time_call(lambda: sess.run(None, feed), cfg.repeats, device)
            out = sess.run(None, feed)
            diff = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(out, raw, strict=True))
            row("backbone", "onnxruntime", base_bb, t, diff, f"{threads} intra-op threads")
            sess = _ort_session(pj_path, threads)
            feed = {f"r{i}": r.numpy() for i, r in enumerate(res)}
            t = time_call(lambda: sess.run(None, feed), cfg.repeats, device)
            out = sess.run(None, feed)
            diff = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(out, proj, strict=True))
            row("projector", "onnxruntime", base_pj, t, diff, "explicit attention (export form)")
            from inference.engines.onnx_runtime import OnnxFeatureRunner

            runner = OnnxFeatureRunner(model, cache_dir=tmp)
            with torch.inference_mode():
                base = time_call(lambda: model.projected(x, pool), cfg.repeats, device)
                t = time_call(
                    lambda: runner.project(pool_residuals(runner.raw(x), pool)), cfg.repeats, device
                )
                out = runner.project(pool_residuals(runner.raw(x), pool))
            diff = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(out, proj, strict=True))
            row("engine", "onnxruntime (LocalEngine default)", base, t, diff, "bb+residual+proj")
    for r in rows:
        r["max_abs_diff"] = float(f"{r['max_abs_diff']:.3g}")
    return rows


def profile_batch(model, images_u8: np.ndarray, pool, path: Path, rows: int = 25) -> None:
    """torch.profiler over one normalise -> backbone -> residual -> projector pass: the
    operator table (self CPU time) as text."""
    from torch.profiler import ProfilerActivity, profile

    from pretrain.residual import pool_residuals

    acts = [ProfilerActivity.CPU]
    if model.device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with torch.inference_mode():
        model.projector(
            pool_residuals(model.raw(model.preprocess(torch.from_numpy(images_u8))), pool)
        )
        with profile(activities=acts, record_shapes=False) as prof:
            x = model.preprocess(torch.from_numpy(images_u8))
            model.projector(pool_residuals(model.raw(x), pool, model.chunk))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    head = (
        f"# torch.profiler, batch {images_u8.shape[0]}, one pass normalise->backbone->residual->"
        f"projector, {torch.get_num_threads()} threads, load average {os.getloadavg()}\n"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(head + table + "\n")


def run_stages(cfg: StagesConfig) -> dict:
    """Load the shipped model and measure everything ``cfg`` asks for; return the JSON dict."""
    from pretrain.checkpoint import load_feature_model
    from pretrain.preprocess import decode_image, resize_uint8
    from pretrain.residual import ReferencePool

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device on this machine")
    started = time.perf_counter()
    load_before = os.getloadavg()
    model = load_feature_model(cfg.backbone, cfg.checkpoint, device=str(device))
    size = int(model.spec.image_size)
    n_pool = max(cfg.pool_shots) if cfg.pool_shots else cfg.shots
    tests, shot_bytes, source = load_inputs(cfg.data, max(cfg.batches), max(cfg.shots, n_pool))
    shots_all = np.stack([resize_uint8(decode_image(b), size) for b in shot_bytes])
    tests_u8 = np.stack([resize_uint8(decode_image(b), size) for b in tests])
    shots_k = shots_all[: cfg.shots]
    result: dict[str, Any] = {
        "command": "adqc bench stages " + " ".join(sys.argv[3:]),
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "model_id": model.model_id,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "images": source,
        "shots": int(shots_k.shape[0]),
        "load_average_start": [round(v, 2) for v in load_before],
    }
    rows = measure_stages(model, tests, shots_k, cfg)
    result["stages"] = rows
    result["totals"] = totals(rows)
    if device.type == "cpu":
        result["default_stages"] = measure_default_stages(tests, shot_bytes, cfg)
    query = np.stack(_cycle(list(tests_u8), cfg.search_batch))
    result["search"] = measure_search(model, shots_all, query, cfg)
    with torch.inference_mode():
        pool = ReferencePool.from_features(
            model.raw(model.preprocess(torch.from_numpy(shots_k)))
        ).to(device)
    if cfg.variants:
        vq = np.stack(_cycle(list(tests_u8), cfg.variant_batch))
        result["variants"] = measure_variants(model, vq, pool, cfg)
    if cfg.profile:
        profile_batch(model, np.stack(_cycle(list(tests_u8), 8)), pool, Path(cfg.profile))
        result["profile"] = cfg.profile
    result["peak_rss_mb"] = rss_mb()
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def write_json(result: dict, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


BEGIN = "<!-- adqc bench stages: generated, do not edit by hand -->"
END = "<!-- adqc bench stages: end -->"


def _stage_lines(
    names: Sequence[str], rows: list[dict], batches: list[int], bold: Sequence[str]
) -> list[str]:
    """A markdown table of ``names`` (ms per image and images/s per batch size), ``bold``
    rows in bold."""
    head = "| stage | " + " | ".join(f"B={b} ms/img | B={b} img/s" for b in batches) + " |"
    lines = [head, "|---" * (1 + 2 * len(batches)) + "|"]
    for name in names:
        cells = []
        for b in batches:
            r = next((r for r in rows if r["stage"] == name and r["batch"] == b), None)
            cells += [str(r["ms_per_image"]), str(r["images_per_s"])] if r else ["", ""]
        label = f"**{name}**" if name in bold else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(result: dict) -> str:
    """The stage, search and variant tables of one run, as markdown."""
    la, lb = result["load_average_start"], result["load_average_end"]
    lines = [
        f"`{result['command']}` — {result['device']}, {result['threads']} threads, "
        f"{result['cpu_count']} CPUs, model `{result['model_id']}`, images: {result['images']}, "
        f"K = {result['shots']}; load average {la[0]} → {lb[0]} (1 min); peak RSS "
        f"{result['peak_rss_mb']} MB; median of {result['config']['repeats']} calls.",
        "",
    ]
    batches = sorted({r["batch"] for r in result["stages"]})
    first = [r for r in result["stages"] if r["batch"] == batches[0]]
    names = [r["stage"] for r in first if "ms_per_batch" in r]
    summed = ["engine", "frame (featurenorm)"]
    rows = result["stages"] + result["totals"]
    lines += _stage_lines([*names, *summed], rows, batches, bold=summed)
    default = result.get("default_stages")
    if default:
        lines += [
            "",
            f"The default detector's frame (`s8-patchcore`, {default[-1]['image_size']} px, "
            f"K = {result['shots']}, CPU): each stage alone, then their sum.",
            "",
        ]
        frame = ["frame (s8-patchcore)"]
        lines += _stage_lines([*DEFAULT_STAGES, *frame], default, batches, bold=frame)
    search = result["search"]
    low = search["low_precision"]
    lines += [
        "",
        f"Residual 1-NN per image (batch {result['config']['search_batch']}) against the pool "
        f"of K shots, float32 vs chunked {low}; 'same NN': fraction of patches whose "
        f"neighbour is unchanged, per level.",
        "",
        f"| K | pool patches per level | fp32 ms/img | {low} ms/img | speed-up | same NN |",
        "|---|---|---|---|---|---|",
    ]
    for r in search["residual"]:
        lines.append(
            f"| {r['shots']} | {' / '.join(map(str, r['pool_patches']))} | "
            f"{r['fp32_ms_per_image']} | {r['low_ms_per_image']} | {r['speedup']} | "
            f"{' / '.join(map(str, r['same_neighbour_fraction']))} |"
        )
    lines += [
        "",
        "PatchCore nearest distance per image against memory banks (torch float32, torch in "
        f"{low}, ONNX Runtime float32: the CPU default):",
        "",
        f"| queries x width | bank rows | fp32 ms/img | {low} ms/img | speed-up | "
        "max relative error | onnxruntime ms/img | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in search["bank"]:
        lines.append(
            f"| {r['queries']} x {r.get('dim', 320)} | {r['bank_size']} | "
            f"{r['fp32_ms_per_image']} | {r['low_ms_per_image']} | {r['speedup']} | "
            f"{r['max_rel_error']} | {r.get('onnxruntime_ms_per_image', '-')} | "
            f"{r.get('onnxruntime_speedup', '-')} |"
        )
    if result.get("variants"):
        lines += [
            "",
            "| stage | variant | batch | baseline ms | variant ms | speed-up | max abs diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["variants"]:
            lines.append(
                f"| {r['stage']} | {r['variant']} | {r['batch']} | {r['baseline_ms']} | "
                f"{r['variant_ms']} | **{r['speedup']}** | {r['max_abs_diff']} |"
            )
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path | str) -> None:
    """Replace the generated section of ``path`` (between the markers) with this run's tables;
    append the section when the markers are absent."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{render_markdown(result)}{END}"
    if BEGIN in text and END in text:
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
