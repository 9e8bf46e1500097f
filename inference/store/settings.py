"""The reference store's settings, the same for every entry point (pydantic-settings).

One environment name for the store URL everywhere: ``ADQC_STORE__URL`` (``adqc serve``,
``adqc product ...``, ``adqc export triton``, ``adqc demo``, the Triton model; the Helm chart
sets it in every pod). The older names ``ADQC_STORE`` and ``ADQC_REDIS_URL`` are still read,
with a one-line deprecation warning on stderr naming the new name; when both an old and the
new name are set, the new one wins.

:class:`DeprecatedEnvSource` is the environment source of every ``ADQC_*`` settings model
(it maps the old names before pydantic-settings sees them: ``ADQC_STORE=file:///x`` would
otherwise be parsed as the JSON of the whole ``store`` section).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: the one environment name of the store URL
STORE_URL_ENV = "ADQC_STORE__URL"
#: older names of the same setting, still read (with a warning)
DEPRECATED_STORE_URL_ENVS = ("ADQC_STORE", "ADQC_REDIS_URL")

_warned: set[str] = set()


class StoreSettings(BaseModel):
    """Reference store (product records)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://... | rediss://... | file:///dir | memory://; "
        "redis://...?durable=file:///dir = Redis as a cache of a durable directory, the source "
        "of truth, refilled from it on a miss (docs/OPERATIONS.md)",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "file://", "memory://")):
            raise ValueError(f"{value!r}: expected redis://, rediss://, file:// or memory://")
        return value


def _warn_once(old: str, note: str = "") -> None:
    if old in _warned:
        return
    _warned.add(old)
    sys.stderr.write(f"warning: {old} is deprecated; use {STORE_URL_ENV}{note}\n")


def translate_deprecated(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """``env`` with the old store-URL names removed and mapped to ``ADQC_STORE__URL`` (keys
    compared case-insensitively; the new name wins when both are set). Warns once per name."""
    out = dict(env)
    new_key = next((k for k in out if k.upper() == STORE_URL_ENV), None)
    for old in DEPRECATED_STORE_URL_ENVS:
        for key in [k for k in out if k.upper() == old]:
            value = out.pop(key)
            if not value:
                continue
            if new_key is None:
                new_key = STORE_URL_ENV.lower() if key.islower() else STORE_URL_ENV
                out[new_key] = value
                _warn_once(old)
            else:
                _warn_once(old, f" ({STORE_URL_ENV} is set and wins)")
    return out


class DeprecatedEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, with the old store-URL names mapped."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return translate_deprecated(super()._load_env_vars())


class StoreEnv(BaseSettings):
    """The store section of the ``ADQC_*`` environment (every other variable is ignored)."""

    model_config = SettingsConfigDict(env_prefix="ADQC_", env_nested_delimiter="__", extra="ignore")

    store: StoreSettings | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, DeprecatedEnvSource(settings_cls))


def store_url(explicit: str | None = None, default: str = StoreSettings().url) -> str:
    """The store URL an entry point uses: ``explicit`` (a ``--store`` option), else
    ``ADQC_STORE__URL`` (or a deprecated name), else ``default``.

    Raises:
        ValueError: the environment's URL has an unknown scheme.
    """
    if explicit:
        return explicit
    try:
        env = StoreEnv()
    except Exception as exc:  # pydantic ValidationError / SettingsError: say which variable
        raise ValueError(f"{STORE_URL_ENV}: {_first_error(exc)}") from None
    return env.store.url if env.store is not None else default


def _first_error(exc: Any) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", exc))
    return str(exc)
