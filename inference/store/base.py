"""The reference-store interface, its errors, and the caching logic every backend shares."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar, runtime_checkable

import cachetools

from inference.errors import TransientError
from inference.records import (
    ModelMismatchError,
    ProductRecord,
    check_product_name,
    decode_record,
    encode_record,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_KEEP_VERSIONS",
    "DEFAULT_MAX_RECORD_BYTES",
    "BaseStore",
    "LruCache",
    "ModelMismatchError",
    "ProductNotFoundError",
    "RecordTooLargeError",
    "ReferenceStore",
    "StoreAuthError",
    "StoreUnavailableError",
]

#: Records above this many stored bytes are refused (override per store: ``?max_bytes=N``).
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
#: Decoded records kept per process, keyed by (product, version).
DEFAULT_CACHE_SIZE = 16
#: Published versions kept per product; older ones are deleted when a new one is published.
DEFAULT_KEEP_VERSIONS = 5


class ProductNotFoundError(KeyError):
    """No such product (or no such version of it) in the store."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else "product not found"


class StoreUnavailableError(TransientError, RuntimeError):
    """The store's backend could not be reached (after its client's bounded retries)."""


class StoreAuthError(RuntimeError):
    """The store's backend refused the credentials (wrong or missing password): fatal, a
    configuration error that no retry fixes."""


class RecordTooLargeError(ValueError):
    """A record whose stored size is above the store's configured maximum."""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A thread-safe :class:`cachetools.LRUCache` (``size`` 0 caches nothing). Used for decoded
    records here, and for what engines and scorers derive from a record (pools, detectors)."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._items: cachetools.LRUCache[K, V] = cachetools.LRUCache(maxsize=max(1, self.size))
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = value

    def evict(self, predicate: Callable[[K], bool]) -> None:
        """Forget every key for which ``predicate(key)`` is true."""
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                del self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@runtime_checkable
class ReferenceStore(Protocol):
    """Versioned, immutable product records. See docs/ARCHITECTURE.md "Serving contracts"."""

    url: str

    def publish(self, record: ProductRecord) -> int: ...

    def get(
        self, product: str, version: int | None = None, *, model_id: str | None = None
    ) -> ProductRecord: ...

    def latest_version(self, product: str) -> int | None: ...

    def versions(self, product: str) -> list[int]: ...

    def list_products(self) -> list[str]: ...

    def remove(self, product: str) -> None: ...


class BaseStore:
    """Everything but the storage: validation, size bound, version lookup, LRU cache.

    Backends implement five primitives on encoded records (metadata JSON + named .npy blobs):
    ``_latest``, ``_read``, ``_write`` (allocate the next version, write the blobs, then flip the
    latest pointer, atomically), ``_delete`` and ``_products``/``_versions``.
    Versions only grow: a removed product's counter survives, so a re-added product never
    reuses a (product, version) pair that some process may still hold in its cache.
    """

    url: str

    def __init__(
        self,
        url: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        cache_size: int = DEFAULT_CACHE_SIZE,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
    ) -> None:
        if max_record_bytes <= 0:
            raise ValueError(f"max_record_bytes must be positive, got {max_record_bytes}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.url = url
        self.max_record_bytes = int(max_record_bytes)
        self.keep_versions = int(keep_versions)
        self._cache: LruCache[tuple[str, int], ProductRecord] = LruCache(cache_size)
        #: number of records decoded from the backend (cache misses); tests and stats read it
        self.fetches = 0

    # ---------------------------------------------------------------- backend primitives
    def _latest(self, product: str) -> int | None:
        raise NotImplementedError

    def _read(self, product: str, version: int) -> tuple[bytes, dict[str, bytes]] | None:
        raise NotImplementedError

    def _write(self, product: str, meta: bytes, arrays: dict[str, bytes]) -> int:
        raise NotImplementedError

    def _delete(self, product: str) -> bool:
        raise NotImplementedError

    def _products(self) -> list[str]:
        raise NotImplementedError

    def _versions(self, product: str) -> list[int]:
        raise NotImplementedError

    # ---------------------------------------------------------------- public API
    def publish(self, record: ProductRecord) -> int:
        """Store ``record`` as the product's next version and make it the latest; atomic."""
        meta, arrays = encode_record(record)
        size = len(meta) + sum(len(blob) for blob in arrays.values())
        if size > self.max_record_bytes:
            raise RecordTooLargeError(
                f"record of product {record.product!r} is {size / 2**20:.1f} MiB, above this "
                f"store's limit of {self.max_record_bytes / 2**20:.1f} MiB ({self.url}); use "
                "fewer shots or a smaller memory bank, or raise the limit with ?max_bytes=N"
            )
        version = self._write(record.product, meta, arrays)
        # the backend pruned the older versions; forget them here too
        pruned = version - self.keep_versions
        self._cache.evict(lambda key: key[0] == record.product and key[1] <= pruned)
        self._cache.put((record.product, version), record.model_copy(update={"version": version}))
        return version

    def get(
        self, product: str, version: int | None = None, *, model_id: str | None = None
    ) -> ProductRecord:
        """The given (default: latest) version of ``product``, from the cache when possible.

        With ``model_id``, a record built with another model raises ModelMismatchError.
        """
        check_product_name(product)
        record = self._get(product, version)
        if model_id is not None:
            record.check_model(model_id)
        return record

    def _get(self, product: str, version: int | None) -> ProductRecord:
        # A latest version can be pruned between reading the pointer and reading its blobs
        # (several newer publishes in between); then read the pointer again.
        for _ in range(3):
            wanted = self._latest(product) if version is None else version
            if wanted is None:
                raise ProductNotFoundError(f"unknown product {product!r} in {self.url}")
            cached = self._cache.get((product, wanted))
            if cached is not None:
                return cached
            blobs = self._read(product, wanted)
            if blobs is not None:
                record = decode_record(blobs[0], blobs[1], wanted)
                if record.product != product:
                    raise ProductNotFoundError(
                        f"{self.url} holds a record of {record.product!r} under {product!r}"
                    )
                self.fetches += 1
                self._cache.put((product, wanted), record)
                return record
            if version is not None:
                known = self._versions(product)
                if not known:
                    raise ProductNotFoundError(f"unknown product {product!r} in {self.url}")
                raise ProductNotFoundError(
                    f"product {product!r} has no version {version} in {self.url} "
                    f"(kept versions: {known})"
                )
        raise ProductNotFoundError(f"product {product!r} kept changing while being read")

    def latest_version(self, product: str) -> int | None:
        """The latest published version (a cheap pointer read), or None if unknown."""
        check_product_name(product)
        return self._latest(product)

    def versions(self, product: str) -> list[int]:
        """Versions still kept for ``product``, oldest first (empty if unknown)."""
        check_product_name(product)
        return sorted(self._versions(product))

    def list_products(self) -> list[str]:
        """Names of the products that have a published version, sorted."""
        return sorted(self._products())

    def remove(self, product: str) -> None:
        """Delete every version of ``product``; ProductNotFoundError if there is none."""
        check_product_name(product)
        existed = self._delete(product)
        self._cache.evict(lambda key: key[0] == product)
        if not existed:
            raise ProductNotFoundError(f"unknown product {product!r} in {self.url}")

    def close(self) -> None:
        """Release connections (no-op for embedded backends)."""

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
