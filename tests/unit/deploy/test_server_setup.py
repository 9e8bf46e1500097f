"""Real Redis, Kafka and Triton started by deploy/servers.py (no mocks)."""

from __future__ import annotations

import uuid

import pytest

from deploy.servers import (
    KafkaBroker,
    ServersNotInstalledError,
    TritonServer,
)

ADD_ONE_CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""

ADD_ONE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("adqc-test: this model refuses to load")

    def execute(self, requests):
        return []
"""


def test_missing_install_says_run_make_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("ADQC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        KafkaBroker()
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        TritonServer(tmp_path)


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch) -> None:
    """The storage tool reads an id starting with "-" as an option; such ids are redrawn."""

    from deploy import servers

    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64 "-A..."
    draws = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(servers.uuid, "uuid4", lambda: next(draws))
    assert servers._kafka_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"
