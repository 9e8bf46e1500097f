"""``adqc bench soak`` (benchmarks/soak.py): a short run reports its RSS series."""

from __future__ import annotations


def test_the_soak_benchmark_reports_an_rss_series() -> None:
    from benchmarks.soak import run_soak

    result = run_soak(frames=8, hostile_every=2, sample_every=4)
    assert result["scored"] + result["dlq"] == 8
    assert result["dlq"] >= 2  # the random 16 MiB and truncated frames
    assert [s["frame"] for s in result["samples"]] == [0, 4, 8]
    assert result["rss_max_mib"] >= result["rss_start_mib"] > 0
