"""`adqc bench triton --stride8` on a real tritonserver it starts itself (tiny run)."""

from __future__ import annotations

import pytest

from benchmarks.triton import run_stride8


@pytest.mark.integration
def test_stride8_bench_times_the_server_and_both_in_process_runtimes():
    pytest.importorskip("onnxruntime")
    lines: list[str] = []
    result = run_stride8(batch=2, requests=2, warmup=1, progress=lines.append)
    assert result["batch"] == 2 and result["image_size"] == 256  # the default's input size
    assert result["triton"]["requests"] == 2 and result["triton"]["throughput_images_per_s"] > 0
    assert set(result["in_process"]) == {"onnxruntime", "torch"}
    for runtime, ratio in result["triton_over_in_process"].items():
        rate = result["in_process"][runtime]["throughput_images_per_s"]
        assert ratio == pytest.approx(result["triton"]["throughput_images_per_s"] / rate, rel=1e-2)
    assert any(line.startswith("triton adqc_stride8") for line in lines)
