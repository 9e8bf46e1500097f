"""What every adqc Triton python model reads in ``initialize``: its config, version folder,
device and torch threads (the ``args`` Triton passes)."""

from __future__ import annotations

import json
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
