"""Redis backend: ``redis://[:password@]host:port/db[?prefix=adqc&keep=5&max_bytes=N...]``.

Key layout (``P`` = prefix, default ``adqc``; ``NAME`` = product name)::

    P:products                   SET     names of products with a published version
    P:product:NAME:seq           STRING  last version number handed out (INCR; kept on remove)
    P:product:NAME:latest        STRING  the newest published version
    P:product:NAME:pinned        STRING  the version readers use instead (absent: latest)
    P:product:NAME:versions      ZSET    versions still kept (score = version)
    P:product:NAME:v<N>:meta     STRING  record metadata, JSON, no arrays
    P:product:NAME:v<N>:arrays   HASH    field -> .npy bytes ("pool.<i>", ..., "detector.<key>")
    P:events                     pub/sub {"event": "published"|"removed", "product", "version"}

Publishing is one Lua script (atomic in Redis): allocate the version, write the blobs under the
versioned keys, flip ``latest``, prune versions beyond ``keep`` (never the pinned one),
publish an event. Readers MGET ``pinned`` and ``latest`` (cheap; once per scored batch) and
fetch a version's two keys in one MULTI only on a cache miss. Single Redis (or a primary with
replicas); keys are not laid out for Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from inference.store.base import BaseStore, StoreAuthError, StoreUnavailableError
from inference.store.urls import redact

#: redis-py errors meaning "wrong or missing credentials, or an ACL that no longer allows our
#: commands" (NOPERM; never retried)
_AUTH_ERRORS = (
    redis.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.NoPermissionError,
)

T = TypeVar("T")

# Shared by _PUBLISH and _FILL: index version ``v`` (KEYS[3] versions, KEYS[4] products) and
# drop all but the newest ARGV[3] versions, never the pinned one.
_INDEX_AND_PRUNE = """
redis.call('ZADD', KEYS[3], v, v)
redis.call('SADD', KEYS[4], ARGV[1])
local pinned = redis.call('GET', ARGV[2] .. ':pinned')
local old = redis.call('ZRANGE', KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
for _, o in ipairs(old) do
  if o ~= pinned then
    redis.call('DEL', ARGV[2] .. ':v' .. o .. ':meta', ARGV[2] .. ':v' .. o .. ':arrays')
    redis.call('ZREM', KEYS[3], o)
  end
end
"""

_PUBLISH = (
    """
local v = redis.call('INCR', KEYS[1])
local base = ARGV[2] .. ':v' .. v
redis.call('SET', base .. ':meta', ARGV[5])
if #ARGV > 5 then
  redis.call('HSET', base .. ':arrays', unpack(ARGV, 6, #ARGV))
end
redis.call('SET', KEYS[2], v)
"""
    + _INDEX_AND_PRUNE
    + """
redis.call('PUBLISH', ARGV[4], cjson.encode({event='published', product=ARGV[1], version=v}))
return v
"""
)

_REMOVE = """
local existed = redis.call('DEL', KEYS[1])
for _, o in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('DEL', ARGV[2] .. ':v' .. o .. ':meta', ARGV[2] .. ':v' .. o .. ':arrays')
end
redis.call('DEL', KEYS[2], ARGV[2] .. ':pinned')
redis.call('SREM', KEYS[3], ARGV[1])
if existed == 1 then
  redis.call('PUBLISH', ARGV[3], cjson.encode({event='removed', product=ARGV[1]}))
end
return existed
"""

# Cache fill (TieredStore): put a version the durable store already numbered; never lowers
# ``seq`` or ``latest``; publishes an event only for a new publish (ARGV[6] == "1").
_FILL = (
    """
local v = tonumber(ARGV[4])
local base = ARGV[2] .. ':v' .. v
redis.call('SET', base .. ':meta', ARGV[7])
redis.call('DEL', base .. ':arrays')
if #ARGV > 7 then
  redis.call('HSET', base .. ':arrays', unpack(ARGV, 8, #ARGV))
end
if tonumber(redis.call('GET', KEYS[1]) or '0') < v then redis.call('SET', KEYS[1], v) end
local latest = tonumber(ARGV[5])
if tonumber(redis.call('GET', KEYS[2]) or '0') < latest then
  redis.call('SET', KEYS[2], latest)
end
"""
    + _INDEX_AND_PRUNE
    + """
if ARGV[6] == '1' then
  redis.call('PUBLISH', KEYS[5], cjson.encode({event='published', product=ARGV[1], version=v}))
end
return v
"""
)

#: query parameters this module reads (the rest go to redis-py unchanged)
_OWN_PARAMS = {"prefix", "keep", "max_bytes", "cache", "retries", "backoff"}


class RedisStore(BaseStore):
    """Product records in Redis; see the module docstring for the key layout."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "adqc",
        retries: int = 4,
        backoff_s: float = 0.05,
        connect_timeout_s: float = 1.0,
        socket_timeout_s: float = 10.0,
        **options: int,
    ) -> None:
        super().__init__(redact(url), **options)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OWN_PARAMS]
        self.prefix = prefix
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self._client = redis.Redis.from_url(
            urlunsplit(parts._replace(query=urlencode(query))),
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=socket_timeout_s,
            # redis-py's own bounded retries: waits backoff_s, 2x, 4x, ... (``retries`` times)
            retry=Retry(
                ExponentialBackoff(cap=30.0, base=self.backoff_s / 2),
                self.retries,
                supported_errors=(redis.ConnectionError, redis.TimeoutError),
            ),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self._publish = self._client.register_script(_PUBLISH)
        self._remove = self._client.register_script(_REMOVE)
        self._fill_script = self._client.register_script(_FILL)

    # ---------------------------------------------------------------- connection handling
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (redis-py retries connection errors, bounded, with backoff); an error that
        outlasts those retries becomes StoreUnavailableError (a TransientError).

        Raises:
            StoreAuthError: Redis refused the password (fatal: not a TransientError).
            StoreUnavailableError: still unreachable after ``retries`` retries.
        """
        started = time.monotonic()
        try:
            return fn()
        except _AUTH_ERRORS as exc:
            raise StoreAuthError(
                f"Redis at {self.url} refused the credentials ({what}): {exc}; check the "
                "password in the store URL and the user's ACL"
            ) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"Redis at {self.url} is unreachable ({what}; {self.retries + 1} attempts "
                f"in {time.monotonic() - started:.1f} s): {exc}"
            ) from exc

    def ping(self) -> None:
        """Raise StoreUnavailableError unless Redis answers."""
        self._call("ping", self._client.ping)

    def close(self) -> None:
        self._client.close()

    # ---------------------------------------------------------------- keys
    def _key(self, product: str, suffix: str) -> str:
        return f"{self.prefix}:product:{product}:{suffix}"

    # ---------------------------------------------------------------- primitives
    def _latest(self, product: str) -> int | None:
        value = self._call("read latest", lambda: self._client.get(self._key(product, "latest")))
        return None if value is None else int(value)

    def _read(self, product: str, version: int) -> tuple[bytes, dict[str, bytes]] | None:
        def fetch() -> list:
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._key(product, f"v{version}:meta"))
            pipe.hgetall(self._key(product, f"v{version}:arrays"))
            return pipe.execute()

        meta, arrays = self._call(f"read {product} v{version}", fetch)
        if meta is None:
            return None
        return meta, {k.decode(): v for k, v in arrays.items()}

    def _write(self, product: str, meta: bytes, arrays: dict[str, bytes]) -> int:
        keys = [self._key(product, s) for s in ("seq", "latest", "versions")]
        keys.append(f"{self.prefix}:products")
        args: list[bytes | str | int] = [
            product,
            f"{self.prefix}:product:{product}",
            self.keep_versions,
            f"{self.prefix}:events",
            meta,
        ]
        for name, blob in arrays.items():
            args += [name, blob]
        return int(self._call(f"publish {product}", lambda: self._publish(keys=keys, args=args)))

    def fill(
        self,
        product: str,
        version: int,
        latest: int,
        blobs: tuple[bytes, dict[str, bytes]],
        *,
        announce: bool = False,
    ) -> None:
        """Cache ``version`` of ``product`` (numbered elsewhere) and raise ``latest`` to at least
        ``latest``; ``announce`` publishes the "published" event (a new version, not a refill)."""
        meta, arrays = blobs
        keys = [self._key(product, s) for s in ("seq", "latest", "versions")]
        keys += [f"{self.prefix}:products", f"{self.prefix}:events"]
        args: list[bytes | str | int] = [
            product,
            f"{self.prefix}:product:{product}",
            self.keep_versions,
            version,
            latest,
            "1" if announce else "0",
            meta,
        ]
        for name, blob in arrays.items():
            args += [name, blob]
        self._call(f"fill {product} v{version}", lambda: self._fill_script(keys=keys, args=args))

    def _delete(self, product: str) -> bool:
        keys = [self._key(product, "latest"), self._key(product, "versions")]
        keys.append(f"{self.prefix}:products")
        args = [product, f"{self.prefix}:product:{product}", f"{self.prefix}:events"]
        return bool(self._call(f"remove {product}", lambda: self._remove(keys=keys, args=args)))

    def _delete_version(self, product: str, version: int) -> bool:
        def delete() -> list:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._key(product, "versions"), version)
            pipe.delete(
                self._key(product, f"v{version}:meta"), self._key(product, f"v{version}:arrays")
            )
            return pipe.execute()

        removed, _ = self._call(f"remove {product} v{version}", delete)
        return bool(removed)

    def _pinned(self, product: str) -> int | None:
        value = self._call("read pin", lambda: self._client.get(self._key(product, "pinned")))
        return None if value is None else int(value)

    def _set_pin(self, product: str, version: int | None) -> None:
        key = self._key(product, "pinned")
        if version is None:
            self._call(f"unpin {product}", lambda: self._client.delete(key))
        else:
            self._call(f"pin {product}", lambda: self._client.set(key, int(version)))

    def _serving(self, product: str) -> int | None:
        keys = [self._key(product, "pinned"), self._key(product, "latest")]
        pinned, latest = self._call("read serving version", lambda: self._client.mget(keys))
        value = pinned if pinned is not None else latest
        return None if value is None else int(value)

    def _products(self) -> list[str]:
        members = self._call("list", lambda: self._client.smembers(f"{self.prefix}:products"))
        return [m.decode() for m in members]

    def _versions(self, product: str) -> list[int]:
        found = self._call(
            "versions", lambda: self._client.zrange(self._key(product, "versions"), 0, -1)
        )
        return [int(v) for v in found]
