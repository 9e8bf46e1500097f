"""Start-up checks (credentials, TLS trust, the engine's checkpoint) and the Kafka settings
of every tool that talks to Kafka.

``adqc serve``, ``adqc camera simulate``, ``adqc alarms tail`` and ``adqc bench pipeline`` share
:class:`~ingest.settings.KafkaSettings` (TLS files, SASL mechanism/user/password): the serve
settings file, or ``ADQC_KAFKA__*`` environment variables (e.g. ``ADQC_KAFKA__SASL_PASSWORD``),
overridden by command-line options.

Wrong credentials are not an outage: kafka-python retries a refused SASL login or a TLS
certificate it cannot verify until its bootstrap times out, and redis-py reports a wrong
password on first use. :func:`check_kafka` and :func:`check_store` run once at start-up and
turn those into :class:`CredentialsError` (the commands exit with :data:`EXIT_CREDENTIALS`);
an unreachable server is left to the callers' usual waiting. :func:`check_engine` loads the
configured local engine the way serve will (``adqc serve --check``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.settings import KafkaSettings, SettingsError

log = logging.getLogger(__name__)

#: exit status of a command whose credentials or TLS trust were refused (documented in
#: docs/OPERATIONS.md); 2 stays "invalid settings or arguments".
EXIT_CREDENTIALS = 3

#: what kafka-python logs when the broker refuses the login or the TLS handshake cannot verify
_KAFKA_REFUSALS = (
    "SaslAuthenticationFailedError",
    "SaslAuthenticationError",
    "CERTIFICATE_VERIFY_FAILED",
    "TopicAuthorizationFailed",
    "ClusterAuthorizationFailed",
    "UnsupportedSaslMechanism",
    "IllegalSaslState",
)


class CredentialsError(RuntimeError):
    """A server refused our credentials or TLS trust: fatal at start-up, no retry helps."""


class _KafkaEnv(BaseSettings):
    """Only the ``ADQC_KAFKA__*`` part of the serve settings (other ``ADQC_*`` are ignored)."""

    model_config = SettingsConfigDict(env_prefix="ADQC_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


def kafka_settings(**options: Any) -> KafkaSettings:
    """``ADQC_KAFKA__*`` environment settings with the given options (None = keep) on top.

    Raises:
        SettingsError: an invalid combination (e.g. SASL without a password), naming the field.
    """
    given = {k: v for k, v in options.items() if v is not None}
    try:
        base = _KafkaEnv().kafka
        data = {k: v for k, v in base.model_dump().items() if k not in given}
        return KafkaSettings.model_validate({**data, **given})
    except ValidationError as exc:
        lines = [
            f"  kafka.{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise SettingsError("invalid Kafka settings:\n" + "\n".join(lines)) from exc


class _Refusals(logging.Handler):
    """Remembers kafka-python log records that mean "credentials or trust refused", from the
    threads of one check only: their names hold ``token`` (the check's own thread, and
    kafka-python's ``kafka-io-<client_id>`` network thread of the check's client)."""

    def __init__(self, token: str) -> None:
        super().__init__(logging.DEBUG)
        self.token = token
        self.seen: list[str] = []
        self.refused = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.token not in (record.threadName or ""):
            return  # another client's, e.g. an earlier check still retrying
        text = record.getMessage()
        if any(marker in text for marker in _KAFKA_REFUSALS):
            self.seen.append(text)
            self.refused.set()


def check_kafka(kafka: KafkaSettings, timeout_s: float = 10.0) -> bool:
    """Connect once with ``kafka``'s settings and ask for the cluster's metadata.

    Returns True when the broker answered, False when it could not be reached within
    ``timeout_s`` (an outage: callers wait as usual). A refusal ends the check as soon as
    kafka-python reports it, not when its bootstrap gives up (:class:`_Attempt`).

    Raises:
        CredentialsError: the broker refused the SASL login, or TLS could not verify it.
    """
    from kafka.errors import KafkaError

    token = uuid.uuid4().hex[:12]
    watcher = _Refusals(token)
    logger = logging.getLogger("kafka")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)
    logger.addHandler(watcher)

    def stop_watching() -> None:
        logger.removeHandler(watcher)
        logger.setLevel(previous)

    attempt = _Attempt(kafka, timeout_s, f"{kafka.client_id}-preflight-{token}")
    try:
        name = f"adqc-kafka-preflight-{token}"
        threading.Thread(target=attempt.run, name=name, daemon=True).start()
        while not attempt.done.wait(0.05) and not watcher.refused.is_set():
            pass
        if watcher.seen:
            raise CredentialsError(_kafka_refusal(kafka, watcher.seen[-1])) from attempt.error
        if attempt.error is not None and not isinstance(attempt.error, KafkaError):
            raise attempt.error  # not an outage: a bug or bad settings, as before the thread
        if attempt.error is not None:
            where = ",".join(kafka.bootstrap)
            log.warning("Kafka at %s not reachable yet: %s", where, attempt.error)
            return False
        return True
    finally:
        attempt.then(stop_watching)  # the watcher hears the attempt to its end


class _Attempt:
    """check_kafka's connection attempt, run on a daemon thread: bootstrap, describe the
    cluster, close the client. The caller may stop waiting early (a refusal was logged);
    the attempt then ends on its own when kafka-python's bootstrap gives up."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float, client_id: str) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self.client_id = client_id
        self.error: Exception | None = None  # what the attempt raised
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._then: Callable[[], None] | None = None

    def run(self) -> None:
        from kafka import KafkaAdminClient

        admin = None
        try:
            config = self.kafka.client_config()
            config["client_id"] = self.client_id
            admin = KafkaAdminClient(**config, bootstrap_timeout_ms=int(self.timeout_s * 1000))
            admin.describe_cluster()
        except Exception as exc:  # handed to the caller: KafkaError or not
            self.error = exc
        finally:
            if admin is not None:
                admin.close()
            with self._lock:
                self.done.set()
                then, self._then = self._then, None
            if then is not None:
                then()

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` now if the attempt has ended, else when it ends."""
        with self._lock:
            if not self.done.is_set():
                self._then = action
                return
        action()


def _kafka_refusal(kafka: KafkaSettings, seen: str) -> str:
    where = ",".join(kafka.bootstrap)
    if "CERTIFICATE_VERIFY_FAILED" in seen:
        what = (
            f"TLS could not verify the broker's certificate (ssl_cafile={kafka.ssl_cafile}, "
            f"ssl_check_hostname={kafka.ssl_check_hostname})"
        )
    else:
        what = (
            f"the broker refused the {kafka.sasl_mechanism} login of user "
            f"{kafka.sasl_username!r} (security_protocol={kafka.security_protocol}): wrong "
            "user or password, or a mechanism the listener does not enable"
        )
    detail = seen.split("Error: ")[-1][:200]
    return f"Kafka at {where}: {what}. Broker said: {detail}"


def check_store(url: str) -> bool:
    """Ping the reference store at ``url`` once (Redis; the embedded stores always answer).

    Returns True when it answered, False when unreachable (an outage: serve waits).

    Raises:
        CredentialsError: Redis refused the password, or TLS could not verify the server.
    """
    from inference.store import StoreAuthError, StoreUnavailableError, open_store

    redis_like = url.split(":", 1)[0].lower() in ("redis", "rediss")
    try:
        store = open_store(url, **({"retries": 0} if redis_like else {}))
    except ValueError as exc:  # e.g. ADQC_REDIS_PASSWORD_FILE names a file we cannot read
        if "PASSWORD" in str(exc):
            raise CredentialsError(str(exc)) from exc
        raise
    try:
        ping = getattr(getattr(store, "cache", store), "ping", None)
        if ping is not None:
            ping()
        return True
    except StoreAuthError as exc:
        raise CredentialsError(str(exc)) from exc
    except StoreUnavailableError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise CredentialsError(
                f"{exc}\n(TLS could not verify the Redis server: check ssl_ca_certs in the URL)"
            ) from exc
        log.warning("reference store not reachable yet: %s", exc)
        return False
    finally:
        store.close()


class EngineCheckError(ValueError):
    """The configured engine cannot be built (e.g. an unreadable or mismatched checkpoint)."""


def check_engine(engine: Any) -> str | None:
    """Load the local engine of ``engine`` (``settings.engine``) as serve would; returns its
    model id. A Triton engine is not contacted (None): its checkpoint lives in the model
    repository, checked by ``adqc export triton`` and by Triton's strict readiness.

    Raises:
        EngineCheckError: the checkpoint is missing, unreadable, for another backbone, or its
            weights do not fit the projector (the message names the file).
    """
    if engine.kind != "local":
        return None
    from inference.engines.local import LocalEngine

    where = engine.checkpoint or f"the shipped checkpoint of {engine.backbone}"
    try:
        loaded = LocalEngine(
            checkpoint=engine.checkpoint, backbone=engine.backbone, device=engine.device
        )
    except Exception as exc:  # any failure to load is a configuration error here
        raise EngineCheckError(f"engine.checkpoint ({where}) cannot be loaded: {exc}") from exc
    return loaded.model_id
