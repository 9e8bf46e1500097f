"""What every adqc Triton python model shares: what ``initialize`` reads (config, version
folder, device, torch threads) and ``execute``'s one-response-per-request batching."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def param(config: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """A string parameter of a model config (``default`` when absent or empty)."""
    value = config.get("parameters", {}).get(name, {}).get("string_value")
    return default if value in (None, "") else value


@dataclass(frozen=True)
class Instance:
    config: dict[str, Any]
    version_dir: Path
    device: str  # "cpu" or "cuda:<id>"

    def param(self, name: str, default: str | None = None) -> str | None:
        return param(self.config, name, default)

    @property
    def weights(self) -> Path | None:
        """Backbone weights shipped in the version folder, when the export gave any."""
        name = self.param("weights")
        return self.version_dir / name if name else None


def instance_from_args(args: dict[str, Any]) -> Instance:
    """Parse Triton's ``initialize`` arguments and apply the ``torch_threads`` parameter."""
    import torch

    config = json.loads(args["model_config"])
    version_dir = Path(args["model_repository"]) / args["model_version"]
    kind = args.get("model_instance_kind", "CPU")
    device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
    threads = int(param(config, "torch_threads", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return Instance(config, version_dir, device)


def execute_batch(
    requests: list,
    parse: Callable[[Any], Any],
    serve: Callable[[list], Iterable],
    output_names: list[str],
    to_error: Callable[[BaseException], Any],
) -> list:
    """One response per request, in order: ``parse`` each request (a failure answers that
    request alone, through ``to_error``), ``serve`` the parsed ones together (it yields one
    list of output arrays or one exception per parsed request), then pair them back."""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    parsed: list = []
    failures: dict[int, BaseException] = {}
    for i, request in enumerate(requests):
        try:
            parsed.append(parse(request))
        except Exception as exc:  # noqa: BLE001 - per-request error
            failures[i] = exc
            parsed.append(None)
    results = iter(serve([p for p in parsed if p is not None]))
    responses = []
    for i, item in enumerate(parsed):
        result = failures[i] if item is None else next(results)
        if isinstance(result, BaseException):
            responses.append(pb_utils.InferenceResponse(error=to_error(result)))
        else:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(level))
                for name, level in zip(output_names, result, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
    return responses


def serve_together(
    requests: Sequence[Any],
    check: Callable[[Any], None],
    images_of: Callable[[Any], Any],
    compute: Callable[[list[Any]], Sequence[Any]],
    log: logging.Logger,
    name: str,
) -> list:
    """One result per request, in order: ``check`` each (raising fails that request alone),
    then ``compute`` the valid ones in one pass (it gets them in order and returns level arrays
    over all their images concatenated), split back per request by ``len(images_of(r))``; an
    exception in ``compute`` fails every valid request of the batch."""
    results: list = [None] * len(requests)
    valid: list[int] = []
    for i, request in enumerate(requests):
        try:
            check(request)
            valid.append(i)
        except Exception as exc:  # noqa: BLE001 - reported to that request only
            results[i] = exc
    if not valid:
        return results
    sizes = [len(images_of(requests[i])) for i in valid]
    try:
        levels = compute([requests[i] for i in valid])
    except Exception as exc:  # noqa: BLE001 - a compute failure fails the batch
        log.exception("%s: batch of %d images failed", name, sum(sizes))
        for i in valid:
            results[i] = exc
        return results
    start = 0
    for i, n in zip(valid, sizes, strict=True):
        results[i] = [level[start : start + n] for level in levels]
        start += n
    return results
