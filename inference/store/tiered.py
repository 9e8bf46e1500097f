"""A durable store (the source of truth) with Redis in front of it as a cache.

``redis://host:6379/0?durable=file:///var/lib/adqc/refs`` opens a :class:`TieredStore`: every
record is written to the durable store first (a directory: a PVC in Kubernetes), which numbers
the version, then copied into Redis. Readers ask Redis; a miss (a flushed or restarted Redis
without persistence, an evicted key) is answered from the durable copy and Redis is filled
again, so losing Redis loses no product. ``list_products``/``versions`` answer from the durable
store (plus whatever Redis holds), so a flushed Redis still lists every product.

Every process that publishes or reads records (``adqc product ...``, ``adqc serve``, the Triton
model) should open the same tiered URL: a record published with a plain ``redis://`` URL exists
only in Redis.
"""

from __future__ import annotations

import logging

from inference.store.base import BaseStore, StoreUnavailableError
from inference.store.redis_store import RedisStore

log = logging.getLogger(__name__)


class TieredStore(BaseStore):
    """``durable`` holds every record; ``cache`` (Redis) is filled from it on a miss.

    A Redis outage degrades to reading the durable store (logged); a durable store that
    cannot be read raises its own error (it is the source of truth).
    """

    def __init__(self, durable: BaseStore, cache: RedisStore, **options: int) -> None:
        options.setdefault("keep_versions", durable.keep_versions)
        options.setdefault("max_record_bytes", durable.max_record_bytes)
        super().__init__(f"{cache.url} (durable: {durable.url})", **options)
        self.durable = durable
        self.cache = cache
        #: versions copied from the durable store into Redis after a miss (tests read it)
        self.refills = 0

    # ---------------------------------------------------------------- helpers
    def _refill(self, product: str, version: int, latest: int, blobs: tuple) -> None:
        try:
            self.cache.fill(product, version, latest, blobs)
            self.refills += 1
        except StoreUnavailableError as exc:
            log.warning("reference cache not refilled (%s); serving from %s", exc, self.durable)

    # ---------------------------------------------------------------- primitives
    def _latest(self, product: str) -> int | None:
        try:
            cached = self.cache._latest(product)
        except StoreUnavailableError as exc:
            log.warning("reference cache unreachable (%s); reading %s", exc, self.durable)
            return self.durable._latest(product)
        if cached is not None:
            return cached
        latest = self.durable._latest(product)
        if latest is not None:
            blobs = self.durable._read(product, latest)
            if blobs is not None:
                self._refill(product, latest, latest, blobs)
        return latest

    def _read(self, product: str, version: int) -> tuple[bytes, dict[str, bytes]] | None:
        try:
            blobs = self.cache._read(product, version)
        except StoreUnavailableError as exc:
            log.warning("reference cache unreachable (%s); reading %s", exc, self.durable)
            return self.durable._read(product, version)
        if blobs is not None:
            return blobs
        blobs = self.durable._read(product, version)
        if blobs is not None:
            latest = self.durable._latest(product) or version
            self._refill(product, version, latest, blobs)
        return blobs

    def _write(self, product: str, meta: bytes, arrays: dict[str, bytes]) -> int:
        version = self.durable._write(product, meta, arrays)
        try:
            self.cache.fill(product, version, version, (meta, arrays), announce=True)
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                f"version {version} of {product!r} is saved in {self.durable.url}, but the Redis "
                f"cache was not updated ({exc}); readers keep the previous version until Redis "
                "is reachable and the product is published again (or Redis is flushed)"
            ) from exc
        return version

    def _delete(self, product: str) -> bool:
        existed = self.durable._delete(product)
        return self.cache._delete(product) or existed

    def _products(self) -> list[str]:
        names = set(self.durable._products())
        try:
            names |= set(self.cache._products())
        except StoreUnavailableError as exc:
            log.warning("reference cache unreachable (%s); listing %s", exc, self.durable)
        return sorted(names)

    def _versions(self, product: str) -> list[int]:
        return self.durable._versions(product) or self.cache._versions(product)

    def close(self) -> None:
        self.cache.close()
        self.durable.close()
