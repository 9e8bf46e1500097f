"""A product's life after onboarding: new versions derived from a kept one, and its history.

- :func:`recalibrate`: same reference pool and fitted detector, a new threshold from new good
  images scored exactly as serving scores frames (:class:`inference.scorer.Scorer`);
- :func:`override_threshold`: same everything, a threshold set by hand, recorded with who and
  why (:class:`inference.records.Provenance`);
- :func:`history`: one summary row per kept version, with the serving/pinned/latest marks.

Each publishes a new version (records are immutable); ``pin``/``unpin`` and the version
pointers are the store's (:mod:`inference.store`).
"""

from __future__ import annotations

import getpass
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.calibration import calibrate
from inference.records import ProductRecord, Provenance
from inference.store import ReferenceStore


def current_user() -> str:
    """Who runs the command, for the record (``$ADQC_USER``, else the login name)."""
    try:
        return os.environ.get("ADQC_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        return f"uid {os.getuid()}"


def recalibrate(
    engine: Any,
    store: ReferenceStore,
    product: str,
    images: Sequence[Path],
    *,
    target_far: float | None = None,
    version: int | None = None,
    by: str | None = None,
    reason: str = "",
) -> ProductRecord:
    """Publish a new version of ``product``: the pool and detector state of ``version``
    (default: the serving one), a threshold calibrated on ``images`` (held-out good images)."""
    from inference.onboarding import MIN_SHOTS, OnboardingError, load_images
    from inference.scorer import Scorer

    if len(images) < MIN_SHOTS:
        raise OnboardingError(f"need at least {MIN_SHOTS} good images to calibrate on")
    base = store.get(product, version, model_id=engine.model_id)
    scorer = Scorer(engine, store)
    results = scorer.score_with(list(load_images(images, base.image_size)), base)
    far = base.calibration.target_far if target_far is None else target_far
    record = base.model_copy(
        update={
            "version": 0,
            "created_at": _now(),
            "calibration": calibrate([r.score for r in results], far, "held-out"),
            "provenance": Provenance(
                action="recalibrate",
                from_version=base.version,
                by=by or current_user(),
                reason=reason or f"recalibrated on {len(images)} image(s)",
            ),
        }
    )
    return _publish(store, record)


def override_threshold(
    store: ReferenceStore,
    product: str,
    threshold: float,
    reason: str,
    *,
    version: int | None = None,
    by: str | None = None,
) -> ProductRecord:
    """Publish a new version of ``product`` with ``threshold`` set by hand (who/why recorded)."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if not reason.strip():
        raise ValueError("--reason is required: say why the threshold is overridden")
    base = store.get(product, version)
    calibration = base.calibration.model_copy(update={"threshold": float(threshold)})
    record = base.model_copy(
        update={
            "version": 0,
            "created_at": _now(),
            "calibration": calibration.model_copy(update={"rule": "override"}),
            "provenance": Provenance(
                action="threshold-override",
                from_version=base.version,
                by=by or current_user(),
                reason=reason.strip(),
                previous_threshold=base.calibration.threshold,
            ),
        }
    )
    return _publish(store, record)


def history(store: ReferenceStore, product: str) -> list[dict[str, Any]]:
    """One row per kept version, oldest first: version, created, detector, threshold, target,
    action, by, reason, and marks (``latest``, ``pinned``, ``serving``)."""
    versions = store.versions(product)
    if not versions:
        from inference.store import ProductNotFoundError

        raise ProductNotFoundError(f"unknown product {product!r} in {store.url}")
    latest, pinned = store.latest_version(product), store.pinned_version(product)
    serving = pinned if pinned is not None else latest
    rows = []
    for v in versions:
        record = store.get(product, v)
        marks = [
            m
            for m, on in (
                ("serving", v == serving),
                ("pinned", v == pinned),
                ("latest", v == latest),
            )
            if on
        ]
        rows.append(
            {
                "version": v,
                "created_at": record.created_at.isoformat(),
                "model_id": record.model_id,
                "detector": record.detector,
                "threshold": record.calibration.threshold,
                "target_far": record.calibration.target_far,
                "calibration": record.calibration.method,
                "action": record.provenance.action,
                "from_version": record.provenance.from_version,
                "by": record.provenance.by,
                "reason": record.provenance.reason,
                "marks": marks,
            }
        )
    return rows


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _publish(store: ReferenceStore, record: ProductRecord) -> ProductRecord:
    # model_copy skips validation: validate the derived record as a whole before it is stored
    checked = ProductRecord.model_validate(record.model_dump())
    version = store.publish(checked)
    return checked.model_copy(update={"version": version})
