"""Settings of ``adqc serve``: a YAML file plus ``ADQC_*`` environment overrides.

Precedence (highest first): keyword arguments, environment (``ADQC_KAFKA__BOOTSTRAP``,
``ADQC_ENGINE__KIND``, ... nested with ``__``), the YAML file, defaults. Everything is
validated at start-up; :func:`load_settings` raises :class:`SettingsError` whose message
names the file and the field at fault.
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _SourceError
from pydantic_settings import YamlConfigSettingsSource as _YamlSource

from inference.store.settings import DeprecatedEnvSource, StoreSettings

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "adqc_serve_config", default=None
)


class SettingsError(ValueError):
    """Invalid or unreadable serve settings; the message names the file and field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    """Kafka connection, security and group timing."""

    bootstrap: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        description="bootstrap servers host:port (list, or comma-separated text)",
    )
    client_id: str = "adqc-serve"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    metadata_max_age_ms: int = Field(
        default=30_000,
        ge=1_000,
        description="metadata refresh period (a topic created after start-up is seen within it)",
    )

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("["):
            value = json.loads(value)
        elif isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bootstrap")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one bootstrap server is needed")
        for server in value:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python producers, consumers and admin clients
        (which also installs :mod:`ingest.kafka_fix` in kafka-python)."""
        from ingest import kafka_fix

        kafka_fix.install()
        config: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "metadata_max_age_ms": self.metadata_max_age_ms,
        }
        if self.security_protocol.startswith("SASL"):
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            assert self.sasl_password is not None
            config["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            config["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    config[name] = str(getattr(self, name))
        return config


class TopicsSettings(_Section):
    """Topic names."""

    frames: str = "frames"
    results: str = "results"
    alarms: str = "alarms"
    dlq: str = "frames.dlq"


class BatchSettings(_Section):
    """Batching and back-pressure."""

    size: int = Field(default=8, ge=1, le=256, description="frames per engine call")
    max_wait_ms: int = Field(
        default=50, ge=0, le=60_000, description="longest wait for a batch to fill"
    )
    max_in_flight: int = Field(
        default=64,
        ge=1,
        description="frames held (decoding, queued, scoring, publishing) before partitions pause",
    )
    decode_workers: int = Field(default=2, ge=1, le=64)
    max_decoded_mib: int = Field(
        default=256,
        ge=1,
        description="decoded pixels held by frames in flight (MiB) before partitions pause",
    )

    @model_validator(mode="after")
    def _room_for_a_batch(self) -> BatchSettings:
        if self.max_in_flight < self.size:
            raise ValueError(f"max_in_flight ({self.max_in_flight}) < size ({self.size})")
        return self


class LocalEngineSettings(_Section):
    """In-process torch engine."""

    kind: Literal["local"] = "local"
    backbone: str = "mobilenet_v2"
    checkpoint: Path | None = Field(
        default=None, description="projector checkpoint; None = the shipped one for backbone"
    )
    device: str = "cpu"
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"checkpoint {value} does not exist")
        return value


class TritonEngineSettings(_Section):
    """Triton Inference Server client engine (gRPC)."""

    kind: Literal["triton"] = "triton"
    url: str = Field(default="127.0.0.1:8001", description="gRPC host:port")
    model: str = "adqc"
    stride8_model: str = Field(
        default="adqc_stride8",
        description="model serving the default detector's stride-8 features ('': the worker "
        "computes them; a server without it is logged and the worker computes them too)",
    )
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)


EngineSettings = Annotated[LocalEngineSettings | TritonEngineSettings, Field(discriminator="kind")]
_ENGINE_KINDS: dict[str, type[_Section]] = {
    "local": LocalEngineSettings,
    "triton": TritonEngineSettings,
}


def _engine_kind_of(key: str, kind: str) -> str | None:
    """The other engine kind that has the setting ``key`` (None when none has it)."""
    return next((k for k, m in _ENGINE_KINDS.items() if k != kind and key in m.model_fields), None)


def _other_engine_defaults(value: Any) -> Any:
    """Drop the keys of the *other* engine kind that hold that kind's default.

    The example config (``--print-example``) lists the local engine's fields; switching it to
    ``kind: triton`` (in the file, or with ``ADQC_ENGINE__KIND=triton``) must not fail on the
    untouched local defaults. A non-default value of the other kind stays an error (its message
    names the kind the key belongs to, see :func:`load_settings`).
    """
    if not isinstance(value, dict):
        return value
    kind = value.get("kind", "local")
    own = _ENGINE_KINDS.get(kind)
    if own is None:
        return value
    kept: dict[str, Any] = {}
    for key, item in value.items():
        other = None if key in own.model_fields else _engine_kind_of(key, kind)
        if other is not None and item == _ENGINE_KINDS[other].model_fields[key].default:
            continue  # the other kind's default, left over from the example config
        kept[key] = item
    return kept


class TelemetrySettings(_Section):
    """Traces (OpenTelemetry, OTLP/HTTP) and metrics (Prometheus)."""

    service_name: str = "adqc-serve"
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces"
    )
    prometheus_port: int | None = Field(
        default=9464, ge=0, le=65535, description="/metrics port; None disables, 0 = any free"
    )
    prometheus_addr: str = Field(
        default="127.0.0.1",
        description="/metrics bind address: loopback by default; the Helm chart sets 0.0.0.0",
    )
    stall_after_s: float = Field(
        default=90.0,
        gt=0,
        description="/healthz fails when the loop has not beaten for this long with partitions "
        "assigned (keep it above retry.drain_timeout_s and retry.max_backoff_s)",
    )
    max_products: int = Field(
        default=100, ge=1, description="distinct product label values; later ones are 'other'"
    )
    max_lines: int = Field(
        default=50, ge=1, description="distinct line label values; later ones are 'other'"
    )
    max_cameras: int = Field(
        default=200, ge=1, description="distinct camera label values; later ones are 'other'"
    )
    alarm_rate_window: int = Field(
        default=1000, ge=10, description="frames per product behind the observed alarm rate"
    )


class FrameLimits(_Section):
    """What a valid frame looks like (violations go to the DLQ)."""

    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    min_side: int = Field(default=16, ge=1)
    max_side: int = Field(default=8192, ge=1)
    max_pixels: int = Field(
        default=8192 * 8192, ge=1, description="width x height of one frame, checked before decode"
    )
    decode_max_side: int = Field(
        default=1024,
        ge=64,
        description="frames are downscaled at decode to this longest side (model input and "
        "heatmap need no more); results still report the frame's full size",
    )
    claim_check_roots: list[Path] = Field(
        default_factory=list,
        description="directories file:// claim checks may point into; empty = claim checks off",
    )
    claim_check_timeout_s: float = Field(default=5.0, gt=0, description="reading one claim check")
    dlq_value_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="a dead-lettered value larger than this is replaced by an excerpt of this "
        "size (the full value saved as a claim check under the first claim-check root)",
    )


class AlarmSettings(_Section):
    """How alarms carry the heatmap."""

    heatmap: Literal["inline", "uri", "none"] = "inline"
    heatmap_dir: Path | None = Field(default=None, description="where 'uri' heatmaps are written")
    heatmap_max_side: int = Field(
        default=1024, ge=16, le=4096, description="heatmaps are drawn at most this large"
    )

    @model_validator(mode="after")
    def _dir_for_uri(self) -> AlarmSettings:
        if self.heatmap == "uri" and self.heatmap_dir is None:
            raise ValueError("heatmap 'uri' needs heatmap_dir")
        return self


class RetrySettings(_Section):
    """Back-off on transient engine/store/broker outages and the shutdown drain."""

    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    publish_timeout_s: float = Field(default=30.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, gt=0)


class ServeSettings(BaseSettings):
    """All settings of ``adqc serve``."""

    model_config = SettingsConfigDict(
        env_prefix="ADQC_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicsSettings = Field(default_factory=TopicsSettings)
    group: str = Field(default="adqc-serve", min_length=1, description="consumer group id")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    engine: EngineSettings = Field(default_factory=LocalEngineSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    limits: FrameLimits = Field(default_factory=FrameLimits)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or one JSON object per line (env ADQC_LOG_FORMAT)"
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_kind(cls, value: Any) -> Any:
        return _other_engine_defaults(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment with the deprecated store-URL names mapped to ADQC_STORE__URL
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            DeprecatedEnvSource(settings_cls),
        ]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(_YamlSource(settings_cls, yaml_file=path))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> ServeSettings:
    """Load and validate settings from ``config`` (YAML), the environment and ``overrides``.

    Raises:
        SettingsError: the file is missing or not a YAML mapping, or a field is invalid.
    """
    where = f"{config}" if config is not None else "settings"
    if config is not None:
        if not config.is_file():
            raise SettingsError(f"{config}: config file not found")
        try:
            parsed = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{config}: not valid YAML: {exc}") from exc
        if not isinstance(parsed, dict):
            raise SettingsError(f"{config}: expected a YAML mapping at the top level")
    token = _CONFIG_FILE.set(config)
    try:
        return ServeSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            if len(loc) > 1 and loc[0] == "engine" and loc[1] in ("local", "triton"):
                del loc[1]  # the tagged-union branch name is noise to the reader
            field = ".".join(loc) or "(top level)"
            env = "ADQC_" + "__".join(loc).upper()
            msg = error["msg"]
            if error["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] == "engine":
                kind = error["loc"][1] if len(error["loc"]) > 2 else "local"
                other = _engine_kind_of(loc[1], str(kind))
                if other is not None:
                    msg += f": a setting of engine kind {other!r}, not {kind!r}"
            lines.append(f"  {field}: {msg} (YAML key {field!r} or env {env})")
        raise SettingsError(f"{where}: invalid serve settings:\n" + "\n".join(lines)) from exc
    except _SourceError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise SettingsError(f"{where}: {exc}{cause}") from exc
    finally:
        _CONFIG_FILE.reset(token)


def example_yaml() -> str:
    """An example config with every default (``adqc serve --print-example``).

    Built from the defaults only (never the environment, which may hold secrets), and
    redacted anyway: no password field, no password inside a URL.
    """
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in ServeSettings.model_fields.items()
    }
    data = ServeSettings.model_construct(**defaults).model_dump(mode="json")
    text = yaml.safe_dump(_redacted(data), sort_keys=False)
    triton = TritonEngineSettings().model_dump(mode="json")
    note = (
        "# engine.kind: local (in-process torch, the fields below) or triton (gRPC client:\n"
        f"# {', '.join(f'{k}: {v}' for k, v in triton.items() if k != 'kind')}).\n"
        "# Switching to triton needs only kind and url; the local fields may stay at their\n"
        "# defaults.\n"
    )
    return text.replace("\nengine:\n", f"\n{note}engine:\n", 1)


def _redacted(value: Any) -> Any:
    """``value`` without password entries, and URLs without their passwords."""
    from inference.store.urls import redact

    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items() if "password" not in k.lower()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return redact(value)
    return value
