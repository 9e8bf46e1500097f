"""Reference store: versioned, immutable product records behind one interface.

``open_store(url)`` picks the backend from the URL scheme:

- ``redis://[:password@]host:port/db`` (also ``rediss://``): :class:`RedisStore`, the production
  store shared by every scorer; key layout in :mod:`inference.store.redis_store`.
- ``memory://`` (private) or ``memory://NAME`` (shared within the process): :class:`MemoryStore`.
- ``file:///abs/dir`` or ``file://relative/dir``: :class:`FileStore`, layout in
  :mod:`inference.store.embedded`.

Options common to all backends, as URL query parameters or keyword arguments:
``max_bytes`` (refuse larger records, default 64 MiB), ``keep`` (versions kept per product,
default 5), ``cache`` (decoded records cached per process, keyed by (product, version), default 16).
Redis only: ``prefix`` (key prefix, default ``adqc``), ``retries`` (default 4) and ``backoff``
(first delay in seconds, doubled per retry, default 0.05) before StoreUnavailableError, and
``durable`` (``?durable=file:///dir``): Redis becomes a cache in front of that durable store,
the source of truth, and is refilled from it on a miss (:class:`TieredStore`, in
:mod:`inference.store.tiered`). A wrong Redis password raises :class:`StoreAuthError` at once
(no retries). A Redis URL without a password takes it from ``ADQC_REDIS_PASSWORD`` or from
the file named by ``ADQC_REDIS_PASSWORD_FILE`` (a mounted Kubernetes Secret), in every
process that opens the store (:func:`inference.store.urls.with_secret_password`).

``get(product)`` reads the latest-version pointer (one cheap read) and returns the cached record
when that version was fetched before, so a scorer that calls it once per batch fetches each
version once and notices a newly published version at its next batch.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from inference.records import ModelMismatchError
from inference.store.base import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_MAX_RECORD_BYTES,
    BaseStore,
    ProductNotFoundError,
    RecordTooLargeError,
    ReferenceStore,
    StoreAuthError,
    StoreUnavailableError,
)
from inference.store.embedded import FileStore, MemoryStore
from inference.store.urls import with_secret_password

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_KEEP_VERSIONS",
    "DEFAULT_MAX_RECORD_BYTES",
    "BaseStore",
    "FileStore",
    "MemoryStore",
    "ModelMismatchError",
    "ProductNotFoundError",
    "RecordTooLargeError",
    "ReferenceStore",
    "StoreAuthError",
    "StoreUnavailableError",
    "open_store",
]

_COMMON = {"max_bytes": "max_record_bytes", "keep": "keep_versions", "cache": "cache_size"}
_REDIS = {"prefix": "prefix", "retries": "retries", "backoff": "backoff_s"}
_TEXT_OPTIONS = {"prefix", "durable"}


def open_store(url: str, **options: object) -> BaseStore:
    """Open the store named by ``url``; keyword options override URL query parameters.

    ``durable`` (Redis URLs only, query parameter or keyword): the durable store's URL
    (``file:///dir``); Redis then caches it (:class:`~inference.store.tiered.TieredStore`).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    redis_like = scheme in ("redis", "rediss")
    allowed = dict(_COMMON, **(dict(_REDIS, durable="durable") if redis_like else {}))
    merged: dict[str, object] = {}
    for key, value in parse_qsl(parts.query):
        if key in allowed:
            target = allowed[key]
            merged[target] = value if key in _TEXT_OPTIONS else _number(url, key, value)
        elif not redis_like:
            raise ValueError(f"unknown store option {key!r} in {url!r} (known: {sorted(allowed)})")
    merged.update(options)
    bare = url.split("?", 1)[0]
    if redis_like:
        url = with_secret_password(url)  # no password in the URL: from the env or a file
        parts = urlsplit(url)
        from pretrain.extras import require

        require("redis", "serve", why="a redis:// reference store")
        from inference.store.redis_store import RedisStore  # redis client only when used

        durable_url = merged.pop("durable", None)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "durable"]
        redis_url = urlunsplit(parts._replace(query=urlencode(query)))
        if not durable_url:
            return RedisStore(redis_url, **merged)  # type: ignore[arg-type]
        from inference.store.tiered import TieredStore

        durable_url = str(durable_url)
        if not durable_url.startswith("file://"):
            raise ValueError(f"durable store must be a file:///dir URL, not {durable_url!r}")
        common = {k: v for k, v in merged.items() if k in _COMMON.values()}
        durable = FileStore(durable_url, **common)  # type: ignore[arg-type]
        cache = RedisStore(redis_url, **merged)  # type: ignore[arg-type]
        return TieredStore(durable, cache, **common)  # type: ignore[arg-type]
    if scheme == "memory":
        return MemoryStore(bare, **merged)  # type: ignore[arg-type]
    if scheme == "file":
        return FileStore(bare, **merged)  # type: ignore[arg-type]
    raise ValueError(
        f"unsupported store URL {url!r}: use redis://host:port/db, memory:// or file:///dir"
    )


def _number(url: str, key: str, value: str) -> int | float:
    try:
        return float(value) if key == "backoff" else int(value)
    except ValueError:
        raise ValueError(f"store option {key}={value!r} in {url!r} is not a number") from None
