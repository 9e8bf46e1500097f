"""``adqc bench stages`` and ``adqc bench all``: the in-process model stages, and the suite.

``adqc bench all`` runs the stage benchmark, then (unless ``--smoke``) the onboarding timing,
then every other registered benchmark it is asked for (``--with pipeline``, ``--with triton``,
``--with scaling``, ``--with io``, ``--with anomalib``) as sub-processes of this same CLI, each
writing its own JSON under the output folder; ``--smoke`` is a seconds-long version (tiny
batches, synthetic images allowed) that CI runs as a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

# the stage benchmark imports torch: loaded inside the commands so `adqc --help` stays light
DEFAULT_DATA = Path("../shared/datasets/mvtec_ad/bottle")

console = Console()
OUT_DIR = Path("docs/perf")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{what}: at least one integer >= 1, got {text!r}")
    return values


def _stage_table(title: str, rows: list[dict]) -> Table:
    """Stage rows (ms per batch and image, images/s) as a table."""
    table = Table(title=title)
    for col in ("stage", "batch", "ms/batch", "ms/image", "images/s"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for r in rows:
        if "ms_per_batch" in r:
            table.add_row(
                r["stage"],
                str(r["batch"]),
                str(r["ms_per_batch"]),
                str(r["ms_per_image"]),
                str(r["images_per_s"]),
            )
    return table


def print_stages(result: dict) -> None:
    """The stage table (ms per image, images/s) and the search and variant tables."""
    title = f"adqc bench stages ({result['device']}, {result['threads']} threads)"
    console.print(_stage_table(title, result["stages"] + result["totals"]))
    if result.get("default_stages"):
        title = "the default detector's frame (s8-patchcore), CPU"
        console.print(_stage_table(title, result["default_stages"]))
    search = result["search"]
    t = Table(title=f"residual 1-NN vs pool size: fp32 vs {search['low_precision']}")
    for col in ("shots", "pool patches", "fp32 ms/img", "low ms/img", "speedup", "same NN"):
        t.add_column(col, justify="right")
    for r in search["residual"]:
        t.add_row(
            str(r["shots"]),
            "/".join(map(str, r["pool_patches"])),
            str(r["fp32_ms_per_image"]),
            str(r["low_ms_per_image"]),
            str(r["speedup"]),
            "/".join(map(str, r["same_neighbour_fraction"])),
        )
    console.print(t)
    t = Table(title="PatchCore nearest distance vs bank: torch fp32 / low / onnxruntime")
    for col in ("queries x width", "bank", "fp32 ms/img", "low ms/img", "onnxruntime ms/img"):
        t.add_column(col, justify="right")
    for r in search["bank"]:
        t.add_row(
            f"{r['queries']} x {r['dim']}",
            str(r["bank_size"]),
            str(r["fp32_ms_per_image"]),
            str(r["low_ms_per_image"]),
            str(r.get("onnxruntime_ms_per_image", "-")),
        )
    console.print(t)
    for r in result.get("variants", []):
        console.print(
            f"{r['stage']:>9} {r['variant']:<30} {r['baseline_ms']:>8} -> {r['variant_ms']:>8} ms"
            f"  x{r['speedup']}  max|diff| {r['max_abs_diff']}"
        )
    console.print(
        f"peak RSS {result['peak_rss_mb']} MB; load average {result['load_average_start']} -> "
        f"{result['load_average_end']}; {result['wall_s']} s"
    )


def stages_command(
    json_out: Path = typer.Option(OUT_DIR / "stages.json", "--json", help="result JSON"),
    batches: str = typer.Option("1,8,32", "--batches", help="batch sizes, comma-separated"),
    repeats: int = typer.Option(5, "--repeats", min=1, help="timed calls per figure (median)"),
    shots: int = typer.Option(8, "--shots", min=1, help="K of the reference pool"),
    pool_shots: str = typer.Option("1,2,4,8,16,32,64", "--pool-shots", help="K sweep"),
    bank_sizes: str = typer.Option("1568,4096,40960", "--bank-sizes", help="PatchCore banks"),
    variants: bool = typer.Option(True, "--variants/--no-variants", help="optimisation variants"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    data: str = typer.Option(str(DEFAULT_DATA), "--data", help="MVTec category folder"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch intra-op threads (0: default)"),
    profile: Path = typer.Option(None, "--profile", help="write a torch.profiler table here"),
    smoke: bool = typer.Option(False, "--smoke", help="seconds-long run (CI)"),
    doc: Path = typer.Option(None, "--doc", help="replace the generated tables in this file"),
) -> None:
    from benchmarks.stages import StagesConfig, run_stages, write_json, write_markdown

    """Time each in-process model stage (images/s, ms per stage, RSS) in one run."""
    if smoke:
        cfg = StagesConfig.smoke_config(device=device, data=data, threads=threads)
    else:
        cfg = StagesConfig(
            batches=_ints(batches, "--batches"),
            repeats=repeats,
            shots=shots,
            pool_shots=_ints(pool_shots, "--pool-shots"),
            bank_sizes=_ints(bank_sizes, "--bank-sizes"),
            variants=variants,
            device=device,
            data=data,
            threads=threads,
            profile=str(profile) if profile else None,
        )
    try:
        result = run_stages(cfg)
    except (RuntimeError, FileNotFoundError) as e:
        console.print(f"[red]adqc bench stages: {e}[/red]")
        raise typer.Exit(2) from e
    write_json(result, json_out)
    if doc is not None:
        write_markdown(result, doc)
    print_stages(result)
    console.print(f"wrote {json_out}")


def _sub(argv: list[str], log: Path, timeout: float | None) -> dict:
    """Run ``adqc <argv>`` as a child process; its rc, seconds and log file."""
    started = time.perf_counter()
    cmd = [sys.executable, "-c", "from adqc.cli import main; main()", *argv]
    with log.open("w") as fh:
        try:
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return {
        "argv": argv,
        "rc": rc,
        "seconds": round(time.perf_counter() - started, 1),
        "log": str(log),
    }


def all_command(
    out: Path = typer.Option(OUT_DIR, "--out", help="folder for every JSON"),
    smoke: bool = typer.Option(False, "--smoke", help="seconds-long stage run only (CI)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda for the model benches"),
    data: str = typer.Option(str(DEFAULT_DATA), "--data", help="MVTec category folder"),
    with_: list[str] = typer.Option(
        [],
        "--with",
        help="also run: onboarding, pipeline, triton, scaling, io, anomalib (repeatable)",
    ),
    timeout: float = typer.Option(1800, "--timeout", help="seconds per child benchmark"),
    doc: Path = typer.Option(None, "--doc", help="replace the generated tables in this file"),
) -> None:
    from benchmarks.stages import StagesConfig, run_stages, write_json, write_markdown

    """The benchmark suite in one command: stages (always), then what ``--with`` names."""
    children = {
        "onboarding": ["bench", "onboarding"],
        "pipeline": ["bench", "pipeline"],
        "triton": ["bench", "triton"],
        "scaling": ["bench", "scaling"],
        "io": ["bench", "io"],
        "anomalib": ["bench", "anomalib"],
    }
    unknown = [name for name in with_ if name not in children]
    if unknown:
        raise typer.BadParameter(f"--with {unknown[0]!r}: choose from {', '.join(children)}")
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if smoke else ("-cuda" if device == "cuda" else "")
    summary: dict = {"load_average_start": list(os.getloadavg()), "runs": {}}
    cfg = (
        StagesConfig.smoke_config(device=device, data=data)
        if smoke
        else StagesConfig(
            device=device, data=data, profile=str(out / f"stages-profile{suffix}.txt")
        )
    )
    stages = run_stages(cfg)
    write_json(stages, out / f"stages{suffix}.json")
    if doc is not None:
        write_markdown(stages, doc)
    summary["runs"]["stages"] = {"json": str(out / f"stages{suffix}.json"), "rc": 0}
    for name in with_:
        argv = [*children[name], "--json", str(out / f"{name}{suffix}.json")]
        summary["runs"][name] = _sub(argv, out / f"{name}{suffix}.log", timeout)
    summary["load_average_end"] = list(os.getloadavg())
    (out / f"suite{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_stages(stages)
    failed = [n for n, r in summary["runs"].items() if r["rc"] != 0]
    console.print(f"suite: {', '.join(summary['runs'])}; failed: {failed or 'none'}")
    if failed:
        raise typer.Exit(1)


def run_onboarding_bench(
    images: str,
    shots: int,
    detector: str,
    old_estimate: bool,
    build: bool = False,
    exact_coreset: bool = False,
) -> dict:
    """Full-shot onboarding timed by phase, through the same functions ``build_record`` runs
    (each phase is printed as it ends); ``build``: also time ``build_record`` itself once."""
    import numpy as np
    import torch

    from inference.engines.local import LocalEngine
    from inference.onboarding import build_record, input_size, load_images, resolve_inputs
    from pretrain.detectors import leave_one_out_scores, make_detector
    from pretrain.detectors.ensemble import PRESETS
    from pretrain.residual import leave_one_out_residuals

    load_start = list(os.getloadavg())
    engine = LocalEngine()
    inputs = resolve_inputs(images, shots)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()

    def done(name: str, since: float) -> float:
        phases[name] = round(time.perf_counter() - since, 2)
        console.print(f"{name}: {phases[name]} s (load {os.getloadavg()[0]:.1f})")
        return time.perf_counter()

    u8 = load_images(inputs.shots, input_size(engine, detector))  # type: ignore[arg-type]
    t = done("decode+resize", t0)
    if detector in PRESETS:
        return _preset_onboarding(engine, u8, detector, phases, done, t0, t, exact_coreset, build)
    with torch.inference_mode():
        raw = engine.raw(engine.model.preprocess(torch.from_numpy(u8)))
    t = done("backbone", t)
    loo = leave_one_out_residuals(raw, engine.project, engine.model.chunk)
    t = done("leave-one-out features", t)
    fitted = make_detector(detector)
    fitted.fit(loo)
    t = done("fit (coreset)", t)
    scores = leave_one_out_scores(fitted.config, loo, engine.image_size, fitted=fitted)
    done("leave-one-out calibration", t)
    result = {
        "command": "adqc bench onboarding " + " ".join(sys.argv[3:]),
        "images": images,
        "shots": int(u8.shape[0]),
        "detector": detector,
        "model_id": engine.model_id,
        "threads": torch.get_num_threads(),
        "runtime": engine.runtime,
        "phases_s": phases,
        "total_s": round(time.perf_counter() - t0, 2),
        "memory_rows": int(fitted.memory.shape[0]) if hasattr(fitted, "memory") else None,
        "calibration_scores_mean": round(float(np.mean(scores.numpy())), 4),
        "load_average_start": load_start,
    }
    if build:
        t = time.perf_counter()
        build_record(engine, "bench", u8, detector=detector)  # type: ignore[arg-type]
        result["build_record_s"] = round(time.perf_counter() - t, 2)
    if old_estimate and detector == "patchcore":
        # the replaced calibration refitted a bank (one coreset) per left-out shot
        t = time.perf_counter()
        make_detector("patchcore").fit([f[1:] for f in loo])
        one = time.perf_counter() - t
        result["old_calibration_estimate_s"] = round(one * u8.shape[0], 1)
        result["one_refit_s"] = round(one, 2)
    result["load_average_end"] = list(os.getloadavg())
    return result


def _preset_onboarding(engine, u8, preset, phases, done, t0, t, exact, build) -> dict:
    """The default's full-shot onboarding by phase (``t0``: the bench's start, ``t``: the end
    of decoding): stride-8 features, the member's fit (blocked coreset), its leave-one-out
    calibration; ``exact``: also one global coreset."""
    import numpy as np
    import torch

    from inference.onboarding import build_record
    from inference.stride8 import in_batches, shared_stride8
    from pretrain.detectors import image_scores, leave_one_out_maps, make_detector
    from pretrain.detectors.ensemble import preset_config
    from pretrain.detectors.leave_one_out import calibration_subset

    config = preset_config(preset)
    if len(config.members) != 1 or config.members[0].source != "stride8":
        raise ValueError(f"bench onboarding times single stride-8 presets, not {preset!r}")
    member = config.members[0].detector
    size = int(u8.shape[1])  # the preset's input size (onboarding.input_size)
    feats = in_batches(shared_stride8(size), u8, 32)
    t = done("stride-8 features", t)
    fitted = make_detector(member)
    fitted.fit(feats)
    t = done("fit (blocked coreset)", t)
    chosen = calibration_subset(len(u8))  # as fit_ensemble calibrates presets
    maps = leave_one_out_maps(fitted.config, feats, size, fitted=fitted, images=chosen)
    scores = image_scores(maps)
    done("leave-one-out calibration", t)
    result = {
        "command": "adqc bench onboarding " + " ".join(sys.argv[3:]),
        "shots": int(u8.shape[0]),
        "detector": preset,
        "image_size": size,
        "threads": torch.get_num_threads(),
        "phases_s": dict(phases),
        "total_s": round(time.perf_counter() - t0, 2),
        "patches": int(fitted.n_patches_seen),
        "memory_rows": int(fitted.memory.shape[0]),
        "coreset_block": member.coreset_block,
        "calibration_images": len(chosen),
        "calibration_scores_mean": round(float(np.mean(scores.numpy())), 4),
    }
    if build:
        t = time.perf_counter()
        build_record(engine, "bench", u8, detector=preset)  # type: ignore[arg-type]
        result["build_record_s"] = round(time.perf_counter() - t, 2)
    if exact:
        t = time.perf_counter()
        make_detector(member.model_copy(update={"coreset_block": 0})).fit(feats)
        result["exact_coreset_fit_s"] = round(time.perf_counter() - t, 2)
    return result


#: what ``adqc bench onboarding`` times: the default preset, or one projector detector
ONBOARDING_DETECTORS = ("s8-patchcore", "featurenorm", "patchcore")


def onboarding_command(
    json_out: Path = typer.Option(OUT_DIR / "onboarding.json", "--json", help="result JSON"),
    images: str = typer.Option(
        str(DEFAULT_DATA / "train" / "good"), "--images", help="folder of good images"
    ),
    shots: int = typer.Option(0, "--shots", min=0, help="K (0: every image found)"),
    detector: str = typer.Option(
        "s8-patchcore", "--detector", help="s8-patchcore (the default) | featurenorm | patchcore"
    ),
    old_estimate: bool = typer.Option(
        True, "--old-estimate/--no-old-estimate", help="patchcore: time one per-shot refit"
    ),
    exact_coreset: bool = typer.Option(
        False, "--exact-coreset", help="s8-patchcore: also time one global greedy coreset"
    ),
    build: bool = typer.Option(False, "--build-record", help="also time build_record once"),
) -> None:
    """Time full-shot onboarding (``adqc product add`` without the store) by phase."""
    from benchmarks.stages import write_json
    from inference.onboarding import OnboardingError, find_images

    if detector not in ONBOARDING_DETECTORS:
        raise typer.BadParameter(
            f"{detector!r}: use one of {', '.join(ONBOARDING_DETECTORS)}", param_hint="--detector"
        )
    try:
        k = shots or len(find_images(images))
        result = run_onboarding_bench(images, k, detector, old_estimate, build, exact_coreset)
    except (OnboardingError, FileNotFoundError) as e:
        console.print(f"[red]adqc bench onboarding: {e}[/red]")
        raise typer.Exit(2) from e
    write_json(result, json_out)
    console.print_json(json.dumps(result))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``adqc bench stages`` and ``adqc bench all``."""
    groups["bench"].command("stages")(stages_command)
    groups["bench"].command("all")(all_command)
    groups["bench"].command("onboarding")(onboarding_command)
