"""Decoded-pixel budget: a hostile frame (all-black 8192x8192 PNG, ~200 KB encoded) never
exists as full-resolution RGB in flight, and its heatmap has no frame-size float64 colours."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime

from PIL import Image

from ingest.decode import decode_sized
from ingest.schemas import FrameHeaders
from ingest.settings import FrameLimits

SCRIPT = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
from datetime import UTC, datetime
from inference.results import ScoreResult
from inference.scorer import heatmap_png
from ingest.decode import decode_sized
from ingest.messages import build_heatmap
from ingest.schemas import FrameHeaders
from ingest.settings import FrameLimits

buffer = io.BytesIO()
Image.new("RGB", (8192, 8192)).save(buffer, format="PNG")
data = buffer.getvalue()
headers = FrameHeaders(product="p", line="l", camera="c", frame_id="f",
                       capture_time=datetime.now(UTC), content_type="image/png")
limits = FrameLimits()
heatmap_png(np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8), np.float32), 1.0)  # warm up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
held = []
for i in range(6):  # six hostile frames in flight at once, each with an alarm heatmap
    image, shape = decode_sized(data, headers, limits, limits.decode_max_side)
    res = ScoreResult("p", 2.0, 1.0, True, np.ones((56, 56), np.float32), [], "m", 1,
                      image_shape=shape)
    build_heatmap(image, res, f"a{i}", "inline", max_side=1024)
    held.append(image)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"encoded": len(data), "peak_mib": (peak - base) / 1024,
                  "held_bytes": sum(a.nbytes for a in held), "shape": list(shape)}))
"""


def test_six_hostile_8192_pngs_stay_within_a_bounded_rss() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["shape"] == [8192, 8192]
    # what stays in flight: 6 frames at 1024x1024 RGB (3 MiB each), not 6 x 192 MiB
    assert report["held_bytes"] == 6 * 1024 * 1024 * 3
    # the transient decode of one frame (8192^2 RGB = 192 MiB) dominates the peak growth;
    # before the decode-time downscale this was > 1 GiB for six frames (plus 2 GiB of
    # float64 colours per heatmap)
    assert report["peak_mib"] < 450, report


def test_the_serve_decoder_keeps_at_most_decode_max_side() -> None:
    buffer = io.BytesIO()
    Image.new("L", (8192, 4096)).save(buffer, format="PNG")
    headers = FrameHeaders(
        product="p",
        line="l",
        camera="c",
        frame_id="f",
        capture_time=datetime.now(UTC),
        content_type="image/png",
    )
    image, shape = decode_sized(buffer.getvalue(), headers, FrameLimits(), 1024)
    assert shape == (4096, 8192) and image.shape == (512, 1024, 3)
    assert json.dumps(list(image.shape))
