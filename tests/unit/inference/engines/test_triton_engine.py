"""TritonEngine without a server: retries when unavailable, URL forms, server errors mapped to
the local exception types. The served path (parity with LocalEngine, per-request errors) is in
tests/integration/inference/engines/test_triton_served.py."""

from __future__ import annotations

import pytest

from inference.engines.triton import (
    TritonEngine,
    TritonEngineError,
    TritonUnavailableError,
)
from inference.records import ModelMismatchError
from inference.store import ProductNotFoundError


def test_unavailable_server_retries_with_backoff():
    """No server: UNAVAILABLE is retried with exponential backoff, then a clear error."""
    from deploy.servers import free_port

    sleeps: list[float] = []
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(TritonUnavailableError, match=url) as info:
        TritonEngine(url, retries=3, backoff_s=0.01, timeout_s=2, sleep=sleeps.append)
    assert sleeps == [0.01, 0.02, 0.04]
    assert "4 attempt(s)" in str(info.value)


def test_url_forms():
    from inference.engines.triton import _strip_url

    assert _strip_url("grpc://h:1") == "h:1" and _strip_url("h:1") == "h:1"
    with pytest.raises(ValueError, match="gRPC"):
        _strip_url("http://h:1")


def test_server_errors_map_to_the_local_exception_types():
    """The class-name prefix the python model writes comes back as the same exception type."""
    from inference.store import StoreUnavailableError

    engine = TritonEngine.__new__(TritonEngine)
    engine.url, engine.model, engine.timeout_s = "h:1", "adqc", 5.0

    def translate(message: str, status: str = "StatusCode.INVALID_ARGUMENT") -> Exception:
        return engine._translate(RuntimeError(message), "score", status, message, 0)

    found = translate("in ensemble 'adqc', ProductNotFoundError: unknown product 'x' in redis://")
    assert isinstance(found, ProductNotFoundError) and "unknown product 'x'" in str(found)
    mismatch = translate("ModelMismatchError: product 'x' was onboarded with model 'a'")
    assert isinstance(mismatch, ModelMismatchError) and "onboarded with model 'a'" in str(mismatch)
    down = translate("StoreUnavailableError: redis down", "StatusCode.UNAVAILABLE")
    assert isinstance(down, StoreUnavailableError)
    # Triton's own Redis refused the password (rotated mid-run): fatal for the worker as when
    # its own store does (serve exits 3), not a bad frame for the DLQ
    from inference.store import StoreAuthError

    refused = translate("in ensemble 'adqc', StoreAuthError: Redis at redis://:***@r refused")
    assert isinstance(refused, StoreAuthError) and "refused" in str(refused)
    from inference.engines.triton import TritonOverloadedError
    from inference.errors import TransientError

    for status in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"):
        busy = translate("Deadline Exceeded", status)
        assert isinstance(busy, TritonOverloadedError) and isinstance(busy, TransientError)
    # a python stub that died under CPU starvation is the server's fault: retried, not DLQ
    stub = translate(
        "Failed to process the request(s) for model instance 'adqc_features_0_0', "
        "message: Stub process 'adqc_features_0_0' is not healthy.",
        "StatusCode.INTERNAL",
    )
    assert isinstance(stub, TransientError)
    other = translate("in ensemble 'adqc', RuntimeError: boom", "StatusCode.INTERNAL")
    assert type(other) is TritonEngineError and "boom" in str(other)
    assert other.status == "StatusCode.INTERNAL"
