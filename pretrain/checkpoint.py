"""The one-file projector checkpoint.

A checkpoint is a `torch.save` of plain dicts/lists/tensors (loadable with weights_only=True):

    format: "adqc-projector", format_version: 1
    config: backbone, levels, channels, image_size, projector hyper-params
            (num_tokens, num_heads, mlp_ratio, se_reduction), trained (bool)
    projector: state dict;  centres: per level [C] mean normal un-projected residual
    data_summary: dict;     history: list/dict of training records
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backbones import get_spec, load_backbone
from .backbones.base import sha256_file
from .model import FeatureModel
from .projector import FeatureProjector

log = logging.getLogger(__name__)

FORMAT = "adqc-projector"
FORMAT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint file is invalid or does not fit the requested backbone; names the file."""


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    projector_state: dict[str, Tensor]
    centres: list[Tensor]
    data_summary: dict[str, Any] = field(default_factory=dict)
    history: Any = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def trained(self) -> bool:
        return bool(self.config.get("trained", True))

    def build_projector(self) -> FeatureProjector:
        """The projector with this checkpoint's weights (strict load), in eval mode."""
        projector = FeatureProjector.from_config(self.config)
        try:
            projector.load_state_dict(self.projector_state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {self.path}: projector weights do not fit: {e}"
            ) from e
        return projector.eval()

    @property
    def model_id(self) -> str:
        return model_id(self.path)


def _check_plain(value: Any, where: str) -> None:
    """Only types torch.load(weights_only=True) reads back."""
    if value is None or isinstance(value, bool | int | float | str | Tensor):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is not str/int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain checkpoint value")


def make_config(
    backbone: str, projector: FeatureProjector, trained: bool = True, **extra: Any
) -> dict[str, Any]:
    """The config block for `projector` on `backbone`: levels/channels/strides/size from the
    spec, hyper-params from the projector, then `extra` (any other training settings)."""
    spec = get_spec(backbone)
    derived = {
        "backbone": spec.name,
        "levels": list(spec.levels),
        "channels": list(spec.channels),
        "strides": list(spec.strides),
        "image_size": spec.image_size,
        **projector.config,
        "trained": bool(trained),
    }
    for k, v in extra.items():
        if k in derived and _plain_list(v) != _plain_list(derived[k]):
            raise CheckpointError(f"config {k}={v!r} contradicts {derived[k]!r}")
    return {**extra, **derived}


def _plain_list(v: Any) -> Any:
    return list(v) if isinstance(v, list | tuple) else v


def save_checkpoint(
    path: Path | str,
    projector: FeatureProjector,
    config: Mapping[str, Any],
    centres: Sequence[Tensor],
    data_summary: Mapping[str, Any] | None = None,
    history: Any = None,
) -> None:
    """Write one checkpoint file atomically. `config` must name the backbone (and may set
    "trained", default True, plus any training settings); levels, channels, image size and
    projector hyper-params are filled in from the spec and the projector."""
    path = Path(path)
    extra = dict(config)
    if "backbone" not in extra:
        raise ValueError("config must name the backbone")
    backbone = str(extra.pop("backbone"))
    trained = bool(extra.pop("trained", True))
    if list(projector.channels) != list(get_spec(backbone).channels):
        raise CheckpointError(
            f"checkpoint {path}: projector widths {projector.channels} do not match backbone "
            f"{backbone!r} widths {list(get_spec(backbone).channels)}"
        )
    full = make_config(backbone, projector, trained, **extra)
    centres = [torch.as_tensor(c).detach().float().cpu().contiguous() for c in centres]
    if [tuple(c.shape) for c in centres] != [(ch,) for ch in projector.channels]:
        raise ValueError(
            f"centres shapes {[tuple(c.shape) for c in centres]} do not match widths "
            f"{projector.channels}"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": full,
        "projector": {k: v.detach().cpu().clone() for k, v in projector.state_dict().items()},
        "centres": centres,
        "data_summary": dict(data_summary or {}),
        "history": history if history is not None else [],
    }
    _check_plain(payload, "checkpoint")
    # Serialise in memory: the bytes (hence the model id) do not depend on the file name.
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def load_checkpoint(path: Path | str, expect_backbone: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint (format version, backbone, level widths).

    Raises FileNotFoundError when absent and CheckpointError (naming the file) when invalid;
    an untrained checkpoint (see `save_untrained`) loads with a logged warning."""
    ckpt = _read(Path(path), expect_backbone)
    if not ckpt.trained:
        log.warning("checkpoint %s holds an UNTRAINED projector (tests only)", path)
    return ckpt


def _read(path: Path, expect_backbone: str | None = None) -> Checkpoint:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adqc projector checkpoint")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this code reads {FORMAT_VERSION}"
        )
    config = raw["config"]
    backbone = config.get("backbone")
    if expect_backbone is not None and backbone != expect_backbone:
        raise CheckpointError(
            f"checkpoint {path} is for backbone {backbone!r}, expected {expect_backbone!r}"
        )
    try:
        spec = get_spec(backbone)
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path}: {e.args[0]}") from None
    if list(config.get("channels", [])) != list(spec.channels) or list(
        config.get("levels", [])
    ) != list(spec.levels):
        raise CheckpointError(
            f"checkpoint {path} has levels {config.get('levels')} / channels "
            f"{config.get('channels')} but backbone {spec.name!r} (registry) has "
            f"{list(spec.levels)} / {list(spec.channels)}"
        )
    return Checkpoint(
        path=path,
        config=config,
        projector_state=raw["projector"],
        centres=list(raw["centres"]),
        data_summary=raw.get("data_summary", {}),
        history=raw.get("history", []),
        format_version=version,
    )


def default_checkpoint(backbone: str) -> Path:
    """The shipped checkpoint pretrain/checkpoints/<backbone>.pt; FileNotFoundError if absent."""
    get_spec(backbone)
    path = CHECKPOINT_DIR / f"{backbone}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped projector checkpoint for {backbone!r} at {path}: run `make pretrain` "
            "(or pass an explicit checkpoint path)"
        )
    return path


def load_feature_model(
    backbone: str = "mobilenet_v2",
    checkpoint: Path | str | None = None,
    weights: Path | str | None = None,
    device: torch.device | str = "cpu",
) -> FeatureModel:
    """Backbone (pretrained weights) + projector from `checkpoint` (default: the shipped one).

    The returned model carries `.checkpoint` and `.model_id` ("<backbone>:<sha256 12 hex>").
    """
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(backbone)
    ckpt = load_checkpoint(path, expect_backbone=backbone)
    model = FeatureModel(load_backbone(backbone, weights), ckpt.build_projector(), device=device)
    model.checkpoint = ckpt
    model.model_id = model_id(path)
    return model


def model_id(checkpoint_path: Path | str) -> str:
    """The model id of a checkpoint: "<backbone>:<first 12 hex of the file's sha256>"."""
    path = Path(checkpoint_path)
    return f"{_read(path).backbone}:{sha256_file(path)[:12]}"


def save_untrained(path: Path | str, backbone: str = "mobilenet_v2", seed: int = 0, **hparams):
    """Write an explicitly UNTRAINED projector checkpoint (config "trained": false) for tests of
    other packages; loading it logs a warning. `hparams` go to FeatureProjector (e.g.
    num_tokens=64 for a small file)."""
    spec = get_spec(backbone)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        projector = FeatureProjector(spec.channels, **hparams)
    finally:
        torch.random.set_rng_state(gen_state)
    centres = [torch.zeros(c) for c in spec.channels]
    save_checkpoint(
        path,
        projector,
        {"backbone": backbone, "trained": False},
        centres,
        data_summary={"untrained": True, "seed": seed},
        history=[],
    )
    return Path(path)
