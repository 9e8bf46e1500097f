"""``adqc bench soak`` (benchmarks/soak.py): a short run reports its RSS series."""

from __future__ import annotations


def test_the_soak_benchmark_reports_an_rss_series() -> None:
    from benchmarks.soak import run_soak

    result = run_soak(frames=8, hostile_every=2, sample_every=4)
    assert result["scored"] + result["dlq"] == 8
    assert result["dlq"] >= 2  # the random 16 MiB and truncated frames
    assert [s["frame"] for s in result["samples"]] == [0, 4, 8]
    assert result["rss_max_mib"] >= result["rss_start_mib"] > 0


def test_the_soak_runs_frames_on_a_worker_pool_and_says_where_the_time_goes() -> None:
    """As serve decodes on ``batch.decode_workers`` threads; the same frames, the same outcome
    as one worker, and the seconds spent per stage."""
    from benchmarks.soak import run_soak

    one = run_soak(frames=12, hostile_every=3, sample_every=6, workers=1)
    two = run_soak(frames=12, hostile_every=3, sample_every=6, workers=2)
    assert (two["workers"], one["workers"]) == (2, 1)
    assert (two["scored"], two["dlq"]) == (one["scored"], one["dlq"])
    assert [s["frame"] for s in two["samples"]] == [0, 6, 12]
    stages = two["stage_seconds"]
    assert set(stages) == {"decode", "heatmap", "dlq_record"}
    assert stages["decode"] > 0 and stages["heatmap"] > 0
