"""`adqc bench scaling`'s pure parts (the run itself needs Kafka and N model processes: it is a
benchmark, not a test): config checks, the steady rate, the group's assignment, the ratios."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from benchmarks.scaling import ScalingConfig, member_partitions, steady_rate, summarise


def test_config_partitions_default_and_threads_per_worker():
    cfg = ScalingConfig(workers=(1, 2, 4), cpus=2)
    assert cfg.partitions == 4
    assert [cfg.threads_for(n) for n in (1, 2, 4)] == [2, 1, 1]
    assert ScalingConfig(workers=(1, 2), threads=3, cpus=2).threads_for(2) == 3
    with pytest.raises(ValueError, match="partitions"):
        ScalingConfig(workers=(1, 4), partitions=2)
    with pytest.raises(ValueError, match="workers"):
        ScalingConfig(workers=(0,))


def test_steady_rate_skips_the_first_burst():
    # a burst of 8 at t=0, then one frame every 100 ms: 10 frames/s, not 17
    stamps = [0] * 8 + [100 * i for i in range(1, 11)]
    assert steady_rate(stamps, skip=8) == pytest.approx(10.0)
    assert steady_rate(stamps, skip=0) > steady_rate(stamps, skip=8)
    assert steady_rate([5], skip=0) != steady_rate([5], skip=0)  # nan: no span


def test_member_partitions_reads_both_assignment_shapes():
    class TP:
        def __init__(self, topic, partitions):
            self.topic, self.partitions = topic, partitions

    class Assignment:
        assigned_partitions = [TP("f", [3, 1]), TP("other", [0])]

    description = {
        "members": [
            {"client_id": "a", "member_id": "1",
             "member_assignment": {"assigned_partitions": [{"topic": "f", "partitions": [0, 2]}]}},
            {"client_id": "b", "member_id": "2", "member_assignment": Assignment()},
            {"client_id": "c", "member_id": "3", "member_assignment": None},
        ]
    }  # fmt: skip
    assert member_partitions(description, "f") == {"a/1": [0, 2], "b/2": [1, 3], "c/3": []}


def test_summarise_ratios_against_one_worker():
    runs = summarise([{"workers": 1, "frames_per_s": 10.0}, {"workers": 2, "frames_per_s": 17.0}])
    assert runs[1]["ratio_to_1"] == 1.7 and runs[1]["efficiency"] == 0.85
    assert runs[0]["ratio_to_1"] == 1.0


def test_cli_refuses_fewer_partitions_than_workers(tmp_path):
    result = CliRunner().invoke(
        build_app(),
        ["bench", "scaling", "--workers", "1,4", "--partitions", "2", "--json",
         str(tmp_path / "s.json")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "partitions" in result.output
