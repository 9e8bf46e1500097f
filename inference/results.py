"""What the scorer returns: a typed :class:`ScoreResult` per frame, with :class:`Region`\\ s.

:class:`Region` is the one region type of the product: the scorer produces it in frame
(input-image) pixels, and the alarm message (``ingest.schemas.AlarmMessage``) carries it as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Region(BaseModel):
    """A connected region of the anomaly map above the threshold, in frame pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bbox: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 (x1/y1 exclusive)")
    area: int = Field(ge=0, description="pixels above threshold, in frame pixels")
    peak: float = Field(description="highest anomaly score inside the region")


@dataclass
class ScoreResult:
    """One frame's score: decision, anomaly map, regions and what scored it."""

    product: str
    score: float
    threshold: float
    is_defective: bool
    anomaly_map: np.ndarray  # [S,S] float32, S = the record's image size
    regions: list[Region]
    model_id: str
    reference_version: int
    timings: dict[str, float] = field(default_factory=dict)  # ms, this frame's share of its batch
    image_shape: tuple[int, int] = (0, 0)  # (H, W) of the input image
    target_far: float | None = None  # the record's calibrated false-alarm rate on good parts

    def to_dict(self) -> dict:
        """JSON-friendly view without the anomaly map."""
        out = asdict(self)
        del out["anomaly_map"]
        out["regions"] = [r.model_dump() for r in self.regions]
        return out
