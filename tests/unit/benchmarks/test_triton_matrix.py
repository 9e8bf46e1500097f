"""`adqc bench triton --matrix`'s float32 twin of the features model (no server needed)."""

from __future__ import annotations

import pytest

from benchmarks.triton import FEATURES_F32, RawClient, _unregister_when_released, add_float32_twin
from deploy.triton_repo import build_model_repository, read_config
from pretrain.checkpoint import save_untrained


def test_float32_twin_takes_the_preprocessed_input(tmp_path):
    ckpt = save_untrained(tmp_path / "untrained.pt", num_tokens=16)
    repo = tmp_path / "repo"
    spec = build_model_repository(repo, checkpoint=ckpt, kind="cpu", max_batch=8)
    add_float32_twin(repo, spec)
    twin = read_config(repo / FEATURES_F32 / "config.pbtxt")
    original = read_config(repo / "adqc_features" / "config.pbtxt")
    assert twin.name == FEATURES_F32
    inputs = {i.name: i for i in twin.input}
    assert "IMAGES" not in inputs and list(inputs["INPUT"].dims) == [3, 224, 224]
    assert twin.parameters["input_is_preprocessed"].string_value == "true"
    for key in ("model_id", "redis_url", "checkpoint", "torch_threads"):
        assert twin.parameters[key].string_value == original.parameters[key].string_value
    assert [o.name for o in twin.output] == [o.name for o in original.output]
    assert (repo / FEATURES_F32 / "1" / "model.py").read_text() == (
        repo / "adqc_features" / "1" / "model.py"
    ).read_text()


def test_raw_client_refuses_unknown_payloads():
    with pytest.raises(ValueError, match="payload"):
        RawClient("127.0.0.1:1", "float16", "grpc", 1, 224, [(8, 14, 14)])


class _HeldRegionClient:
    """A Triton client whose server still holds a region for ``held`` unregister calls."""

    def __init__(self, held: int, error: str = "it is currently in use") -> None:
        self.held, self.error, self.calls = held, error, 0

    def unregister_system_shared_memory(self, region: str) -> None:
        self.calls += 1
        if self.calls <= self.held:
            raise RuntimeError(f"Cannot unregister shared memory region '{region}', {self.error}.")


def test_shared_memory_region_is_unregistered_once_the_server_releases_it():
    client = _HeldRegionClient(held=3)
    _unregister_when_released(client, "adqc-bench-x-in")
    assert client.calls == 4
    other = _HeldRegionClient(held=1, error="it is not registered")
    with pytest.raises(RuntimeError, match="not registered"):  # no waiting on other errors
        _unregister_when_released(other, "adqc-bench-x-in")
    assert other.calls == 1
