"""Detectors combined after normalising each by its leave-one-out normal scores.

Each member's maps become z-scores with the mean and standard deviation of that member's
leave-one-out image scores on the K references (every reference scored by the member fitted on
the other K-1: ``leave_one_out.fit_ensemble``), so members whose raw scales differ by orders of
magnitude weigh the same; the combined map is the mean of the members' z-maps and the image
score its maximum, as for a single detector. No defective image is involved.

Members read different feature sources (the projector's levels, raw stride-8 backbone levels):
the ensemble takes one flat list of levels, the present sources in ``SOURCE_ORDER``
(``flat_features``), and each member names the indices it reads (``EnsembleMember.levels``).
A one-member ensemble is a single detector on another feature source, its scores left raw.
Post-processing (bilinear upsampling, mean over levels, Gaussian) is linear and keeps
constants, so ``forward`` returns every member's z-scored token maps weighted so that the
shared ``anomaly_map`` gives exactly the mean of the members' maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from pretrain.detectors.base import Detector, DetectorConfig, NotFittedError
from pretrain.detectors.components import image_scores
from pretrain.detectors.featurenorm import FeatureNorm, FeatureNormConfig
from pretrain.detectors.padim import PaDiM, PaDiMConfig
from pretrain.detectors.patchcore import PatchCore, PatchCoreConfig

#: floor of a member's spread, relative to its mean (K nearly equal LOO scores)
MIN_RELATIVE_STD = 1e-3
#: where a member's features come from (the scorer and onboarding build the flat list)
FeatureSource = Literal["adpretrain", "stride8"]
#: the order of the sources in the flat feature list
SOURCE_ORDER: tuple[FeatureSource, ...] = ("adpretrain", "stride8")
MemberConfig = Annotated[
    FeatureNormConfig | PatchCoreConfig | PaDiMConfig, Field(discriminator="method")
]
_MEMBER_CLASSES: dict[str, type[Detector]] = {
    "featurenorm": FeatureNorm,
    "patchcore": PatchCore,
    "padim": PaDiM,
}


@dataclass(frozen=True)
class MemberScale:
    """Location and spread of one member's normal image scores."""

    mean: float
    std: float

    @classmethod
    def from_loo(cls, loo_scores: Tensor) -> MemberScale:
        """From the member's leave-one-out image scores of the K references (K >= 2)."""
        s = loo_scores.double().flatten()
        if s.numel() < 2:
            raise ValueError(f"a member scale needs >= 2 leave-one-out scores, got {s.numel()}")
        mean = float(s.mean())
        std = max(float(s.std(unbiased=True)), MIN_RELATIVE_STD * abs(mean), 1e-12)
        return cls(mean, std)

    def apply(self, maps: Tensor) -> Tensor:
        return (maps - self.mean) / self.std


def combine_maps(member_maps: Sequence[Tensor], scales: Sequence[MemberScale]) -> Tensor:
    """Mean of the members' normalised maps [B,S,S]."""
    if not member_maps or len(member_maps) != len(scales):
        raise ValueError(f"{len(member_maps)} member maps for {len(scales)} scales")
    shape = member_maps[0].shape
    if any(m.shape != shape for m in member_maps):
        raise ValueError(f"member maps disagree in shape: {[tuple(m.shape) for m in member_maps]}")
    acc = torch.zeros(shape, dtype=torch.float32)
    for maps, scale in zip(member_maps, scales, strict=True):
        acc += scale.apply(maps.float())
    return acc / len(member_maps)


def member_scales(member_loo_maps: Sequence[Tensor]) -> list[MemberScale]:
    """Each member's scale from its leave-one-out maps; a single member keeps its raw scores
    (identity scale): nothing to put on a common scale, and a z-score from K noisy normal
    scores would make raw distances, comparable across products as they are, less so."""
    if len(member_loo_maps) == 1:
        return [MemberScale(0.0, 1.0)]
    return [MemberScale.from_loo(image_scores(m)) for m in member_loo_maps]


def ensemble_scores(
    member_maps: Sequence[Tensor], member_loo_maps: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Combined test maps, their image scores, and the combined references' leave-one-out
    image scores (what calibration uses), each member scaled by its own LOO image scores."""
    scales = member_scales(member_loo_maps)
    maps = combine_maps(member_maps, scales)
    loo = combine_maps(member_loo_maps, scales)
    return maps, image_scores(maps), image_scores(loo)


class EnsembleMember(BaseModel):
    """One member: its detector, its feature source and the flat-list levels it reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: FeatureSource
    levels: tuple[int, ...] = Field(min_length=1)
    detector: MemberConfig


class EnsembleConfig(DetectorConfig):
    """Members in a fixed order (the default is ``DEFAULT_ENSEMBLE``)."""

    method: Literal["ensemble"] = "ensemble"
    members: tuple[EnsembleMember, ...] = Field(min_length=1)
    #: the preset it was built from (``PRESETS``), shown by `adqc product list`
    preset: str | None = None
    #: the size (px) images are resized to for this detector; None: the engine's. Only for
    #: ensembles that read raw stride-8 features alone (the projector is trained at its size)
    image_size: int | None = Field(None, ge=32)

    @model_validator(mode="after")
    def _own_size_reads_stride8_only(self) -> EnsembleConfig:
        if self.image_size is not None and "adpretrain" in self.sources():
            raise ValueError("an ensemble with its own image_size must read stride8 features only")
        if self.image_size is not None and self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, not {self.image_size}")
        return self

    def sources(self) -> tuple[FeatureSource, ...]:
        """The feature sources the members read, in ``SOURCE_ORDER``."""
        used = {m.source for m in self.members}
        return tuple(s for s in SOURCE_ORDER if s in used)


def flat_features(
    config: EnsembleConfig,
    adpretrain: Sequence[Tensor] | None = None,
    stride8: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The flat level list an ensemble of ``config`` reads: its sources in ``SOURCE_ORDER``."""
    given = {"adpretrain": adpretrain, "stride8": stride8}
    flat: list[Tensor] = []
    for source in config.sources():
        levels = given[source]
        if levels is None:
            raise ValueError(f"the ensemble reads {source} features, none were given")
        flat += [torch.as_tensor(level) for level in levels]
    return flat


class Ensemble(Detector[EnsembleConfig]):
    """Members fitted on their own levels; buffers ``scale_mean`` / ``scale_std`` [M]."""

    name = "ensemble"
    config_class = EnsembleConfig

    def __init__(self, config: EnsembleConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.members = nn.ModuleList(
            _MEMBER_CLASSES[m.detector.method](m.detector) for m in self.config.members
        )
        self.register_buffer("scale_mean", torch.empty(0, dtype=torch.float64))
        self.register_buffer("scale_std", torch.empty(0, dtype=torch.float64))

    def member_features(self, features: Sequence[Tensor], index: int) -> list[Tensor]:
        """The levels member ``index`` reads from the flat list."""
        levels = self.config.members[index].levels
        if max(levels) >= len(features):
            raise ValueError(
                f"ensemble member {index} reads levels {levels} but {len(features)} were given"
            )
        return [features[i] for i in levels]

    def fit(self, features: Sequence[Tensor]) -> None:
        """Fit every member on its levels (the scales come from ``set_scales``)."""
        for i, member in enumerate(self.members):
            member.fit(self.member_features(features, i))
        resolved = tuple(
            spec.model_copy(update={"detector": member.config})
            for spec, member in zip(self.config.members, self.members, strict=True)
        )
        self.config = self.config.model_copy(update={"members": resolved})

    def set_scales(self, scales: Sequence[MemberScale]) -> None:
        if len(scales) != len(self.members):
            raise ValueError(f"{len(scales)} scales for {len(self.members)} members")
        self.scale_mean = torch.tensor([s.mean for s in scales], dtype=torch.float64)
        self.scale_std = torch.tensor([s.std for s in scales], dtype=torch.float64)

    @property
    def fitted(self) -> bool:
        return self.scale_mean.numel() == len(self.members) and all(m.fitted for m in self.members)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if not self.fitted:
            raise NotFittedError("Ensemble.score called before fit and set_scales")
        outputs = [m(self.member_features(features, i)) for i, m in enumerate(self.members)]
        total = sum(len(o) for o in outputs)
        levels: list[Tensor] = []
        for i, maps in enumerate(outputs):
            mean, std = float(self.scale_mean[i]), float(self.scale_std[i])
            weight = total / (len(self.members) * len(maps))
            levels += [(s.float() - mean) / std * weight for s in maps]
        return levels

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"members": [m.detector.method for m in self.config.members]}
        for i, m in enumerate(self.members):
            out.update({f"member{i}_{k}": v for k, v in m.info().items()})
        return out


#: full shot only (above 10k patches, K > 12): greedy coresets within blocks of ~11 images
S8_CORESET_BLOCK = 8192
#: the bank of the 224 px member turns into coresets above this many patches (~12 images)
S8_CORESET_THRESHOLD = 10_000
#: the input size of the ``s8-patchcore`` preset (docs/BACKBONES.md, "The default's input size")
S8_INPUT_SIZE = 256
#: the size the thresholds above are stated for (the peer's; the member's grid is S / 8)
S8_BASE_SIZE = 224
#: the input sizes a product may choose for ``s8-patchcore`` (multiples of 16): below 64 the
#: stride-16 level is a 4x4 grid; above 512 the whole 8-shot bank makes a frame cost seconds
S8_SIZE_RANGE = (64, 512)


def check_s8_input_size(image_size: int) -> int:
    """``image_size`` when ``s8-patchcore`` can run at it, else a ValueError naming the range."""
    low, high = S8_SIZE_RANGE
    if not (low <= image_size <= high) or image_size % 16:
        raise ValueError(
            f"the s8-patchcore input size must be a multiple of 16 from {low} to {high} px, "
            f"not {image_size}"
        )
    return int(image_size)


def s8_patchcore_config(image_size: int = S8_BASE_SIZE) -> PatchCoreConfig:
    """The default's PatchCore member (anomalib's layers, embedding and padding) for
    ``image_size`` px input: the coreset threshold and block scale with the patches per image,
    so the bank turns into coresets at the same number of references at every size."""
    scale = (image_size / S8_BASE_SIZE) ** 2
    return PatchCoreConfig(
        aggregation="concat",
        n_levels=2,
        pool_include_pad=True,
        coreset_threshold=math.ceil(S8_CORESET_THRESHOLD * scale),
        coreset_block=math.ceil(S8_CORESET_BLOCK * scale),
    )


def _s8_patchcore(first_level: int, image_size: int = S8_BASE_SIZE) -> EnsembleMember:
    return EnsembleMember(
        source="stride8",
        levels=(first_level, first_level + 1),
        detector=s8_patchcore_config(image_size),
    )


def preset_config(
    name: str, projected_levels: int = 3, image_size: int | None = None
) -> EnsembleConfig:
    """An ensemble preset (docs/BACKBONES.md, "Choosing the default detector"):

    - ``s8-patchcore`` (the default of `adqc product add`): PatchCore on raw ``features.6`` +
      ``features.13`` (anomalib's layers and embedding) of images resized to ``image_size``
      px (default ``S8_INPUT_SIZE``; a product setting, ``check_s8_input_size``), the whole
      bank up to ~12 references, above that 10 % kept by blocked greedy coresets
      (``s8_patchcore_config``);
    - ``ensemble``: that member at the engine's size (224 px) plus FeatureNorm on the
      projector's ``projected_levels`` levels, each z-scored by its leave-one-out normal scores
      (no ``image_size``: the projector runs at the size it was trained at).
    """
    if name == "s8-patchcore":
        size = S8_INPUT_SIZE if image_size is None else check_s8_input_size(image_size)
        member = _s8_patchcore(0, size)
        return EnsembleConfig(members=(member,), preset=name, image_size=size)
    if image_size is not None and name in PRESETS:
        raise ValueError(
            f"the {name} preset runs at the engine's input size; an input size is a setting "
            "of s8-patchcore only"
        )
    if name == "ensemble":
        projected = EnsembleMember(
            source="adpretrain",
            levels=tuple(range(projected_levels)),
            detector=FeatureNormConfig(),
        )
        return EnsembleConfig(members=(_s8_patchcore(projected_levels), projected), preset=name)
    raise ValueError(f"unknown ensemble preset {name!r}; choose one of {', '.join(PRESETS)}")


PRESETS = ("s8-patchcore", "ensemble")
