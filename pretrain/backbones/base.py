"""Backbone building blocks: the spec, the frozen feature extractor and weight-file helpers."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights for a backbone are not available; the message says how to provide them."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone produces: tapped levels, widths, strides, and its input convention."""

    name: str
    levels: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # human-readable weight source

    @property
    def grid_sizes(self) -> tuple[int, ...]:
        """Spatial size h = w of each level's map at `image_size`."""
        return tuple(-(-self.image_size // s) for s in self.strides)


class Backbone(nn.Module):
    """A frozen feature extractor: normalised float [B,3,S,S] -> one [B,C_l,h_l,w_l] map per level.

    Parameters never require grad and the module stays in eval mode whatever `train()` is asked,
    so a parent module can be put in training mode without touching BatchNorm statistics.
    """

    def __init__(self, spec: BackboneSpec, weights_loaded: bool) -> None:
        super().__init__()
        self.spec = spec
        self.weights_loaded = weights_loaded

    def freeze(self) -> Backbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Backbone:  # noqa: ARG002 - always eval
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class StagedBackbone(Backbone):
    """A CNN cut into consecutive stages; the output of each stage is one tapped level."""

    def __init__(self, spec: BackboneSpec, stages: Sequence[nn.Module], weights_loaded: bool):
        super().__init__(spec, weights_loaded)
        if len(stages) != len(spec.levels):
            raise ValueError(f"{spec.name}: {len(stages)} stages for {len(spec.levels)} levels")
        self.stages = nn.ModuleList(stages)
        self.freeze()

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


# ----------------------------------------------------------------------------- weight files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.(?:pth|pt)$")


def verify_hash_prefix(path: Path, expected_prefix: str | None = None) -> None:
    """Check a weights file against the sha256 prefix torchvision puts in its file names.

    `expected_prefix` defaults to the prefix found in the file name (``name-<hex>.pth``);
    files without one are not checked.
    """
    prefix = expected_prefix
    if prefix is None:
        m = _HASH_IN_NAME.search(path.name)
        if m is None:
            return
        prefix = m.group(1)
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(
            f"weights file {path} is corrupt or not the expected file: sha256 {digest[:16]}... "
            f"does not start with {prefix}"
        )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a plain state dict from .pth/.pt/.bin (weights_only) or .safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"weights file {path} does not hold a state dict")
    return sd


def require_file(path: Path | str, name: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file for backbone {name!r} not found: {path}")
    return path


def offline() -> bool:
    """True when hub downloads are switched off by the environment."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("ADQC_OFFLINE", "HF_HUB_OFFLINE"))


@lru_cache(maxsize=8)
def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A quick TCP probe: an offline machine fails in milliseconds, not minutes of retries."""
    if offline():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def random_weights_warning(name: str, reason: str) -> None:
    msg = (
        f"backbone {name!r} is running with RANDOM weights ({reason}); its features are "
        "meaningless for anomaly detection. Use only for shape tests."
    )
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def resolve_source(
    name: str,
    weights: Path | str | None,
    default: Callable[[], Path | None],
    how_to: str,
    allow_random: bool,
) -> Path | None:
    """Pick the weights file: explicit path, else the default source, else random (if allowed).

    Returns None for random weights (after a loud warning); raises WeightsNotFoundError otherwise.
    """
    if weights is not None:
        return require_file(weights, name)
    found = default()
    if found is not None:
        return found
    if allow_random:
        random_weights_warning(name, "no weights file found")
        return None
    raise WeightsNotFoundError(
        f"no pretrained weights for backbone {name!r}: {how_to} "
        f"(or pass allow_random=True for shape tests only)"
    )
