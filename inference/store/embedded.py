"""Embedded backends: in-process memory (``memory://[name]``) and a directory (``file:///dir``).

File layout (one directory per product; every write lands in a temporary directory that is
renamed into place before the ``latest`` pointer is replaced, so a reader sees the old
version or the new one, never half of one)::

    DIR/products/<product>/
        .lock              flock(2) taken by writers (publish, remove)
        seq                last version number handed out (kept after remove)
        latest             the published version (absent once removed)
        v000007/           one version: meta.json, pool.0.npy, pool.1.npy, ..., detector.<key>.npy
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from inference.store.base import BaseStore

_MEMORY_SPACES: dict[str, _Space] = {}
_MEMORY_SPACES_LOCK = threading.Lock()


class _Space:
    """The shared state behind ``memory://NAME`` (every store opened on NAME sees it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq: dict[str, int] = {}
        self.latest: dict[str, int] = {}
        self.blobs: dict[str, dict[int, tuple[bytes, dict[str, bytes]]]] = {}


class MemoryStore(BaseStore):
    """Records in this process's memory. ``memory://`` is private to the store object;
    ``memory://NAME`` is shared by every store opened with the same NAME in this process."""

    def __init__(self, url: str = "memory://", **options: int) -> None:
        super().__init__(url, **options)
        name = url.removeprefix("memory://").strip("/")
        if not name:
            self._space = _Space()
        else:
            with _MEMORY_SPACES_LOCK:
                self._space = _MEMORY_SPACES.setdefault(name, _Space())

    def _latest(self, product: str) -> int | None:
        return self._space.latest.get(product)

    def _read(self, product: str, version: int) -> tuple[bytes, dict[str, bytes]] | None:
        return self._space.blobs.get(product, {}).get(version)

    def _write(self, product: str, meta: bytes, arrays: dict[str, bytes]) -> int:
        space = self._space
        with space.lock:
            version = space.seq.get(product, 0) + 1
            space.seq[product] = version
            kept = space.blobs.setdefault(product, {})
            kept[version] = (meta, dict(arrays))
            space.latest[product] = version
            for old in sorted(kept)[: -self.keep_versions]:
                del kept[old]
        return version

    def _delete(self, product: str) -> bool:
        with self._space.lock:
            self._space.blobs.pop(product, None)
            return self._space.latest.pop(product, None) is not None

    def _products(self) -> list[str]:
        return list(self._space.latest)

    def _versions(self, product: str) -> list[int]:
        return list(self._space.blobs.get(product, {}))


class FileStore(BaseStore):
    """Records in a directory (``file:///abs/dir`` or ``file://relative/dir``); several
    processes may share it (writers serialise on a per-product flock)."""

    def __init__(self, url: str, **options: int) -> None:
        super().__init__(url, **options)
        path = url.removeprefix("file://")
        if not path:
            raise ValueError(f"file store URL needs a directory: {url!r} (e.g. file:///var/adqc)")
        self.root = Path(path).expanduser()
        self._products_dir = self.root / "products"
        try:
            self._products_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the store directory {self.root}: {exc}") from exc

    def _dir(self, product: str) -> Path:
        return self._products_dir / product

    @contextlib.contextmanager
    def _locked(self, product: str) -> Iterator[Path]:
        directory = self._dir(product)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield directory
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _read_int(path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except FileNotFoundError:
            return None

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _latest(self, product: str) -> int | None:
        return self._read_int(self._dir(product) / "latest")

    def _read(self, product: str, version: int) -> tuple[bytes, dict[str, bytes]] | None:
        directory = self._dir(product) / f"v{version:06d}"
        try:
            meta = (directory / "meta.json").read_bytes()
            arrays = {p.stem: p.read_bytes() for p in directory.glob("*.npy")}
        except FileNotFoundError:  # pruned or removed while reading
            return None
        return meta, arrays

    def _write(self, product: str, meta: bytes, arrays: dict[str, bytes]) -> int:
        with self._locked(product) as directory:
            version = (self._read_int(directory / "seq") or 0) + 1
            self._write_atomic(directory / "seq", str(version).encode())
            staging = directory / f".staging-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                files = {"meta.json": meta, **{f"{k}.npy": v for k, v in arrays.items()}}
                for name, blob in files.items():
                    with open(staging / name, "wb") as handle:
                        handle.write(blob)
                        handle.flush()
                        os.fsync(handle.fileno())
                os.rename(staging, directory / f"v{version:06d}")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._write_atomic(directory / "latest", str(version).encode())
            for old in sorted(self._versions(product))[: -self.keep_versions]:
                shutil.rmtree(directory / f"v{old:06d}", ignore_errors=True)
        return version

    def _delete(self, product: str) -> bool:
        if not self._dir(product).is_dir():
            return False
        with self._locked(product) as directory:
            existed = (directory / "latest").exists()
            (directory / "latest").unlink(missing_ok=True)
            for version in self._versions(product):
                shutil.rmtree(directory / f"v{version:06d}", ignore_errors=True)
        return existed

    def _products(self) -> list[str]:
        return [p.parent.name for p in self._products_dir.glob("*/latest")]

    def _versions(self, product: str) -> list[int]:
        directory = self._dir(product)
        found = []
        for path in directory.glob("v*"):
            with contextlib.suppress(ValueError):
                found.append(int(path.name[1:]))
        return found
