"""Engines: projected features for a batch of one product's images.

- :class:`LocalEngine` (``inference.engines.local``): in-process torch, same model code.
- ``TritonEngine`` (``inference.engines.triton``): a Triton Inference Server over gRPC.
"""

from inference.engines.base import Engine, InvalidImageError, check_batch

__all__ = ["Engine", "InvalidImageError", "LocalEngine", "check_batch"]


def __getattr__(name: str):  # torch is imported only when the local engine is used
    if name == "LocalEngine":
        from inference.engines.local import LocalEngine

        return LocalEngine
    raise AttributeError(name)
