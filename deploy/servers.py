"""Start and stop real local servers (Redis, Kafka in KRaft mode, Triton, Jaeger) on loopback.

Used by the test fixtures (tests/integration/conftest.py), ``adqc stack`` and ``adqc bench
pipeline``. Each server binds 127.0.0.1 on free ports, waits until it really answers (with a
timeout and an error that quotes the tail of the server's log), exposes its address, and stops
cleanly. The binaries come from ``make servers`` (deploy/scripts/install_all.sh): Debian's
redis-server, Kafka jars from Maven Central in ``.cache/kafka/libs``, tritonserver from
nvidia-pytriton in ``.cache/triton`` and Jaeger v2 built from the Go module proxy in
``.cache/bin/jaeger``.

Every class works as a context manager (``with RedisServer() as redis: ...``); ``start()`` and
``stop()`` may be called repeatedly on one object (restart tests keep the data and the ports),
``close()`` stops the server and removes the temporary working directory it created.

Example::

    with KafkaBroker() as kafka, RedisServer() as redis:
        kafka.create_topics(["frames", "results"], partitions=4)
        print(kafka.bootstrap, redis.url)
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_CONFIG_DIR = Path(__file__).resolve().parent / "kafka"
LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run `make servers` (bash deploy/scripts/install_all.sh) first"
_PORT_IN_USE = ("Address already in use", "BindException", "address already in use")


class ServerStartError(RuntimeError):
    """A server did not start or did not become ready in time (message has its log tail)."""


class ServersNotInstalledError(ServerStartError):
    """The server's binaries are not installed: ``make servers`` was not run on this machine."""


def cache_dir() -> Path:
    """The ignored cache folder the install scripts fill (``ADQC_CACHE_DIR`` overrides it)."""
    return Path(os.environ.get("ADQC_CACHE_DIR", REPO_ROOT / ".cache"))


#: ports free_port() returned lately: the kernel may offer a just-closed port again, and a
#: server given the same port twice (Triton's gRPC and metrics ports) fails to start
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=256)
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now and that this process has not
    been handed lately (so the ports of one server differ)."""
    with _HANDED_OUT_LOCK:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.append(port)
                return port
    raise OSError("no free loopback port that was not handed out lately (64 tries)")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_LIVE: weakref.WeakSet[_ManagedServer] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


class _ManagedServer:
    """A server run as a child process with its output in ``<workdir>/server.log``.

    Subclasses implement ``_command()`` (argv), ``_ready()`` (a real readiness probe) and
    optionally ``_prepare()`` (before each start), ``_pick_ports()`` and ``_shutdown()``.
    """

    name = "server"
    startup_timeout = 60.0
    stop_timeout = 30.0
    #: start the process in a process group of its own (pgid = pid): a Ctrl-C in the terminal
    #: then reaches only the parent, which stops its servers in order (``adqc stack up``).
    own_process_group = False

    def __init__(self, workdir: str | Path | None, startup_timeout: float | None) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=f"adqc-{self.name}-"))
            if workdir is None
            else Path(workdir).resolve()
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        if startup_timeout is not None:
            self.startup_timeout = startup_timeout
        self._auto_ports = True
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    # -- to implement ---------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Work before each start (config files, storage format)."""

    def _pick_ports(self) -> None:
        """Choose new free ports (only called when the ports were not given)."""

    def _shutdown(self) -> None:
        """Ask the server to exit (default: SIGTERM)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)

    def _after_stop(self) -> None:
        """Cleanup after the process is gone (shared memory, pid files)."""

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> _ManagedServer:
        """Start the server and block until it is ready; returns self.

        Raises:
            ServersNotInstalledError: the binaries are missing (run ``make servers``).
            ServerStartError: the process exited or did not become ready in time.
        """
        if self._closed:
            raise ServerStartError(f"{self.name}: start() after close()")
        if self.running:
            return self
        attempts = 3 if self._auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                _LIVE.add(self)
                return self
            except ServerStartError:
                port_clash = any(s in log_tail(self.log_path, 200) for s in _PORT_IN_USE)
                if not (port_clash and attempt < attempts):
                    raise
                self._pick_ports()  # another process took a port between choice and bind
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self._prepare()
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== adqc: starting {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                    env=self._env(),
                    process_group=0 if self.own_process_group else None,
                )
            except OSError as err:
                raise ServerStartError(f"{self.name}: cannot run {command[0]}: {err}") from err
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._after_stop()
                raise ServerStartError(self._failure(f"exited with status {code} while starting"))
            with contextlib.suppress(Exception):
                if self._ready():
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    self._failure(f"not ready after {self.startup_timeout:.0f} s (killed)")
                )
            time.sleep(0.1)

    def _failure(self, what: str) -> str:
        return (
            f"{self.name} {what}; command: {' '.join(self._command())}\n"
            f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash, for reliability tests); ``start()`` may follow."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        self._proc = None
        self._after_stop()

    def stop(self) -> None:
        """Stop the server cleanly (then SIGKILL after ``stop_timeout`` s); data is kept."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self._shutdown()
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
        self._proc = None
        self._after_stop()

    def restart(self) -> None:
        """Stop then start again on the same ports and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the working directory it created (if it created it)."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        _LIVE.discard(self)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
class RedisServer(_ManagedServer):
    """Debian's ``redis-server`` on a free loopback port.

    Args:
        port: the port (default: a free one).
        appendonly: persist every write to an append-only file in ``workdir`` (fsync always),
            so ``stop()``/``kill()`` then ``start()`` keeps the data.
        workdir: data + log directory (default: a temporary one removed by ``close()``).
        startup_timeout: seconds to wait for PING.
        maxmemory: optional Redis ``maxmemory`` value (e.g. ``"256mb"``).
        password: ``requirepass`` (clients must AUTH); ``url`` then carries it.
        tls: a :class:`deploy.tls.CertPair` (server certificate + key) and ``tls_ca`` (the CA
            that signed it, also used to verify client certificates when
            ``tls_client_auth``): Redis then also listens with TLS on ``tls_port``
            (``tls_url`` is the ``rediss://`` address); the plain port stays for the probes.
    """

    name = "redis"
    startup_timeout = 20.0

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        workdir: str | Path | None = None,
        startup_timeout: float | None = None,
        maxmemory: str | None = None,
        password: str | None = None,
        tls: Any = None,
        tls_ca: str | Path | None = None,
        tls_port: int | None = None,
        tls_client_auth: bool = False,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        if (tls is None) != (tls_ca is None):
            raise ValueError("tls and tls_ca go together (server certificate + its CA)")
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise ServersNotInstalledError(f"redis-server not found on PATH: {INSTALL_HINT}")
        self._binary = binary
        self._auto_ports = port is None
        self.port = port or free_port()
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.password = password
        self.tls = tls
        self.tls_ca = Path(tls_ca) if tls_ca is not None else None
        self.tls_client_auth = tls_client_auth
        self.tls_port = (tls_port or free_port()) if tls is not None else None

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return LOOPBACK

    def _auth(self) -> str:
        from urllib.parse import quote

        return f":{quote(self.password, safe='')}@" if self.password else ""

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        return f"redis://{self._auth()}{LOOPBACK}:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """``rediss://[:password@]127.0.0.1:<tls port>/0?ssl_ca_certs=<CA>`` (TLS servers only)."""
        if self.tls_port is None:
            raise ValueError("this RedisServer was started without tls")
        return f"rediss://{self._auth()}{LOOPBACK}:{self.tls_port}/0?ssl_ca_certs={self.tls_ca}"

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` client for this server (extra keyword arguments are passed on)."""
        import redis

        kwargs.setdefault("password", self.password)
        return redis.Redis(host=LOOPBACK, port=self.port, **kwargs)

    def _pick_ports(self) -> None:
        self.port = free_port()
        if self.tls_port is not None:
            self.tls_port = free_port()

    def _command(self) -> list[str]:
        command = [
            self._binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.appendonly:
            command += ["--appendfsync", "always"]
        if self.maxmemory:
            command += ["--maxmemory", self.maxmemory]
        if self.password:
            command += ["--requirepass", self.password]
        if self.tls is not None:
            command += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls_ca),
                "--tls-auth-clients", "yes" if self.tls_client_auth else "no",
            ]  # fmt: skip
        return command

    def _ready(self) -> bool:
        client = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            # PING answers LOADING errors while an AOF is replayed: check persistence is loaded.
            return bool(client.ping()) and client.info("persistence").get("loading") == 0
        finally:
            client.close()

    def _shutdown(self) -> None:
        # redis-cli, not redis-py: redis-py retries (with back-off) the connection that
        # SHUTDOWN closes, which costs seconds.
        env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None
        subprocess.run(
            ["redis-cli", "-h", LOOPBACK, "-p", str(self.port), "shutdown", "nosave"],
            env=env,
            capture_output=True,
            timeout=10,
            check=False,
        )


# ---------------------------------------------------------------------------------------------
def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (like random-uuid).

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with "-": the storage tool
    would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker(_ManagedServer):
    """A single-node Apache Kafka broker (KRaft, broker + controller) from ``.cache/kafka/libs``.

    Storage is formatted on the first start and kept in ``workdir/data``: ``stop()`` then
    ``start()`` (or ``restart()``) reuses the same ports, log dir and cluster id, so committed
    messages and consumer offsets survive. Topics are auto-created on first use with
    ``partitions`` partitions, or explicitly with ``create_topics``.

    Args:
        port: client (PLAINTEXT) port, default a free one.
        controller_port: KRaft controller port, default a free one.
        workdir: config + data + log directory (default: temporary, removed by ``close()``).
        partitions: default partition count of auto-created topics.
        auto_create_topics: let producers/consumers create topics on first use.
        heap: JVM heap size (``-Xmx``/``-Xms``), e.g. ``"512m"``.
        startup_timeout: seconds to wait until the broker serves metadata.
        overrides: extra ``server.properties`` entries (strings), replacing the template's.
        tls: a :class:`deploy.tls.CertPair` (broker certificate + key) with ``tls_ca`` (its CA,
            which also verifies client certificates): adds an ``SSL`` listener
            (``ssl_port``; mutual TLS when ``ssl_client_auth`` is ``"required"``), and with
            ``sasl_users`` a ``SASL_SSL`` listener (``sasl_ssl_port``).
        sasl_users: ``{username: password}`` accepted by SASL/PLAIN (and, created at storage
            format time, SCRAM-SHA-256/512): adds a ``SASL_PLAINTEXT`` listener
            (``sasl_plaintext_port``). The PLAINTEXT listener stays for probes and admin.
    """

    name = "kafka"
    startup_timeout = 90.0
    stop_timeout = 40.0

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        workdir: str | Path | None = None,
        partitions: int = 1,
        auto_create_topics: bool = True,
        heap: str = "512m",
        startup_timeout: float | None = None,
        overrides: Mapping[str, str] | None = None,
        tls: Any = None,
        tls_ca: str | Path | None = None,
        ssl_client_auth: str = "required",
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        if (tls is None) != (tls_ca is None):
            raise ValueError("tls and tls_ca go together (broker certificate + its CA)")
        libs = cache_dir() / "kafka" / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise ServersNotInstalledError(f"Kafka jars not found in {libs}: {INSTALL_HINT}")
        java = shutil.which("java")
        if java is None:
            raise ServersNotInstalledError(f"java not found on PATH: {INSTALL_HINT}")
        super().__init__(workdir, startup_timeout)
        self._java = java
        self._libs = libs
        self._auto_ports = port is None and controller_port is None
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.partitions = partitions
        self.auto_create_topics = auto_create_topics
        self.heap = heap
        self.overrides = dict(overrides or {})
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self.tls = tls
        self.tls_ca = Path(tls_ca) if tls_ca is not None else None
        self.ssl_client_auth = ssl_client_auth
        self.sasl_users = dict(sasl_users or {})
        self.secure_ports: dict[str, int] = {}
        self._pick_secure_ports()

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers string: ``127.0.0.1:<port>``."""
        return f"{LOOPBACK}:{self.port}"

    def bootstrap_for(self, protocol: str) -> str:
        """``127.0.0.1:<port>`` of the listener speaking ``protocol`` (PLAINTEXT, SSL, ...)."""
        if protocol == "PLAINTEXT":
            return self.bootstrap
        if protocol not in self.secure_ports:
            known = sorted(self.secure_ports)
            raise ValueError(f"this broker has no {protocol} listener (has: {known})")
        return f"{LOOPBACK}:{self.secure_ports[protocol]}"

    def _pick_secure_ports(self) -> None:
        protocols = []
        if self.tls is not None:
            protocols.append("SSL")
        if self.sasl_users:
            protocols.append("SASL_PLAINTEXT")
        if self.tls is not None and self.sasl_users:
            protocols.append("SASL_SSL")
        self.secure_ports = {protocol: free_port() for protocol in protocols}

    def _pick_ports(self) -> None:
        self.port, self.controller_port = free_port(), free_port()
        self._pick_secure_ports()

    def _security_config(self) -> dict[str, str]:
        """server.properties entries for the SSL / SASL listeners (empty without them)."""
        if not self.secure_ports:
            return {}
        listeners = [f"PLAINTEXT://{LOOPBACK}:{self.port}"]
        listeners += [f"{p}://{LOOPBACK}:{port}" for p, port in self.secure_ports.items()]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        protocols += [f"{p}:{p}" for p in self.secure_ports]
        config = {
            "listeners": ",".join(listeners + [f"CONTROLLER://{LOOPBACK}:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "listener.security.protocol.map": ",".join(protocols),
        }
        if self.tls is not None:
            config.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(self.tls.bundle),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(self.tls_ca),
                    "ssl.endpoint.identification.algorithm": "https",
                    "listener.name.ssl.ssl.client.auth": self.ssl_client_auth,
                }
            )
        if self.sasl_users:
            config["sasl.enabled.mechanisms"] = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
            users = " ".join(f'user_{u}="{pw}"' for u, pw in self.sasl_users.items())
            plain = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            for protocol in self.secure_ports:
                if protocol.startswith("SASL"):
                    prefix = f"listener.name.{protocol.lower()}"
                    config[f"{prefix}.plain.sasl.jaas.config"] = plain
                    config[f"{prefix}.scram-sha-256.sasl.jaas.config"] = scram
                    config[f"{prefix}.scram-sha-512.sasl.jaas.config"] = scram
        return config

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            self._java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{KAFKA_CONFIG_DIR / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{self._libs}/*",
            main_class,
            *args,
        ]

    def _render_config(self) -> str:
        template = (KAFKA_CONFIG_DIR / "server.properties.in").read_text()
        text = template.format(
            port=self.port,
            controller_port=self.controller_port,
            host=LOOPBACK,
            data_dir=self.data_dir,
            partitions=self.partitions,
            auto_create=str(self.auto_create_topics).lower(),
        )
        overrides = {**self._security_config(), **self.overrides}
        if overrides:
            keys = set(overrides)
            kept = [ln for ln in text.splitlines() if ln.split("=", 1)[0].strip() not in keys]
            text = "\n".join(kept + [f"{k}={v}" for k, v in overrides.items()]) + "\n"
        return text

    def _prepare(self) -> None:
        self.config_path.write_text(self._render_config())
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self._java_command(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _kafka_cluster_id(),
            "-c",
            str(self.config_path),
            "--ignore-formatted",
            *self._scram_args(),
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ServerStartError(
                f"kafka storage format failed (status {done.returncode}): {' '.join(command)}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )

    def _scram_args(self) -> list[str]:
        """``--add-scram`` credentials for every SASL user (KRaft stores them in the metadata)."""
        args = []
        for user, password in self.sasl_users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        return args

    def _command(self) -> list[str]:
        return self._java_command("kafka.Kafka", str(self.config_path))

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        # The port opens before the broker has registered with the controller: ask for metadata.
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=3000, client_id="adqc-ready"
        )
        try:
            return len(admin.describe_cluster().get("brokers", [])) > 0
        finally:
            admin.close()

    def admin(self, **kwargs: Any) -> Any:
        """A ``kafka.KafkaAdminClient`` for this broker (caller closes it)."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, **kwargs)

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create topics (replication 1) and wait until each partition has a leader.

        Topics that already exist are left as they are.
        """
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        names = list(names)
        admin = self.admin(request_timeout_ms=int(timeout * 1000))
        try:
            for name in names:
                topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([topic])
            deadline = time.monotonic() + timeout
            while True:
                try:
                    described = {t["name"]: t for t in admin.describe_topics(names)}
                except KafkaError:
                    described = {}
                ready = [
                    n
                    for n in names
                    if described.get(n, {}).get("error_code", -1) == 0
                    and described[n]["partitions"]
                    and all(p["leader_id"] >= 0 for p in described[n]["partitions"])
                ]
                if len(ready) == len(names):
                    return
                if time.monotonic() > deadline:
                    missing = sorted(set(names) - set(ready))
                    raise ServerStartError(f"kafka topics not ready after {timeout} s: {missing}")
                time.sleep(0.2)
        finally:
            admin.close()

    def list_topics(self) -> list[str]:
        """Names of the broker's topics (internal ones included)."""
        admin = self.admin()
        try:
            return sorted(admin.list_topics())
        finally:
            admin.close()


# ---------------------------------------------------------------------------------------------
# The launcher the Helm chart's Triton pod runs too: it puts the interpreter's bin directory first
# on PATH and its LIBDIR + the bundled libraries on LD_LIBRARY_PATH, then execs tritonserver.
TRITON_LAUNCHER = Path(__file__).resolve().parent / "docker" / "tritonserver.sh"


class TritonServer(_ManagedServer):
    """NVIDIA Triton (tritonserver 2.51 from nvidia-pytriton, python backend) on loopback ports.

    The python backend's stub runs models with ``python`` (the first ``python3`` on PATH: the
    given interpreter's bin directory is put first) and needs that interpreter's libpython on
    LD_LIBRARY_PATH (both handled here). Readiness is strict: ``/v2/health/ready`` answers 200
    only once every model that should load is ready, and each of ``load_models`` is checked.

    Args:
        model_repository: the model repository directory.
        http_port, grpc_port, metrics_port: ports (default: free ones).
        model_control_mode: ``"none"`` (load everything), ``"explicit"`` or ``"poll"``.
        load_models: with ``explicit``, models to load at start (``["*"]`` for all).
        python: interpreter whose environment runs the python-backend models.
        backend_config: extra ``--backend-config`` entries for the python backend.
        extra_args: more tritonserver arguments.
        workdir: log directory (default: temporary, removed by ``close()``).
        startup_timeout: seconds to wait until the server and models are ready.
        log_verbose: tritonserver ``--log-verbose`` level.
        exit_timeout: ``--exit-timeout-secs``: how long a SIGTERM waits for in-flight requests
            (open client connections count too) before the server exits anyway.
    """

    name = "triton"
    startup_timeout = 180.0

    def __init__(
        self,
        model_repository: str | Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        python: str | Path | None = None,
        backend_config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | Path | None = None,
        startup_timeout: float | None = None,
        log_verbose: int = 0,
        exit_timeout: int = 10,
    ) -> None:
        root = cache_dir() / "triton"
        if not (root / "bin" / "tritonserver").exists():
            raise ServersNotInstalledError(f"tritonserver not found in {root}: {INSTALL_HINT}")
        repo = Path(model_repository).resolve()
        if not repo.is_dir():
            raise FileNotFoundError(f"Triton model repository not found: {repo}")
        if model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(
                f"model_control_mode must be none, explicit or poll, not {model_control_mode!r}"
            )
        if load_models and model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit'")
        super().__init__(workdir, startup_timeout)
        self.root = root
        self.model_repository = repo
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.python = str(python or sys.executable)
        self.backend_config = dict(backend_config or {})
        self.extra_args = list(extra_args)
        self.log_verbose = log_verbose
        self.exit_timeout = exit_timeout
        self.stop_timeout = exit_timeout + 15.0
        self._auto_ports = http_port is None and grpc_port is None and metrics_port is None
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        # Unique prefix of the python backend's /dev/shm regions, so stop() removes only ours.
        self.shm_prefix = f"adqc_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def http_url(self) -> str:
        """``127.0.0.1:<http port>`` (the form tritonclient.http expects)."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<grpc port>`` (the form tritonclient.grpc expects)."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint ``http://127.0.0.1:<metrics port>/metrics``."""
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def _pick_ports(self) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, ADQC_PYTHON=self.python, TRITON_ROOT=str(self.root))
        env.pop("PYTHONPATH", None)  # the stub ignores it; models must import from the venv
        return env

    def _command(self) -> list[str]:
        backend = {"shm-region-prefix-name": self.shm_prefix, **self.backend_config}
        command = [
            "bash",
            str(TRITON_LAUNCHER),
            f"--model-repository={self.model_repository}",
            f"--model-control-mode={self.model_control_mode}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
        ]
        command += [f"--backend-config=python,{k}={v}" for k, v in backend.items()]
        command += [f"--load-model={name}" for name in self.load_models]
        return command + self.extra_args

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        url = f"http://{self.http_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _post(self, path: str, timeout: float = 120.0) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _ready(self) -> bool:
        if self._get("/v2/health/ready")[0] != 200:
            return False
        names = [m for m in self.load_models if m != "*"]
        return all(self.model_ready(name) for name in names)

    def model_ready(self, name: str) -> bool:
        """True when the model ``name`` is loaded and ready."""
        return self._get(f"/v2/models/{name}/ready")[0] == 200

    def load_model(self, name: str) -> None:
        """Load (or reload) a model (explicit mode); raises ServerStartError with the reason."""
        status, body = self._post(f"/v2/repository/models/{name}/load")
        if status != 200:
            raise ServerStartError(
                f"triton could not load model {name!r}: {body.decode(errors='replace')}\n"
                f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
            )

    def unload_model(self, name: str) -> None:
        """Unload a model (explicit mode)."""
        status, body = self._post(f"/v2/repository/models/{name}/unload")
        if status != 200:
            raise ServerStartError(f"triton could not unload {name!r}: {body.decode()}")

    def metrics(self) -> str:
        """The Prometheus metrics text."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def _after_stop(self) -> None:
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()


# ---------------------------------------------------------------------------------------------
class JaegerServer(_ManagedServer):
    """Jaeger v2 (OTLP in, in-memory storage, query API + UI) from ``.cache/bin/jaeger``.

    The binary is built from the Go module proxy by ``deploy/scripts/install_jaeger.sh``. The
    server runs on a generated config (``workdir/jaeger.yaml``) so every port is chosen here
    (free ones by default) and bound to 127.0.0.1; run bare, Jaeger would take the fixed ports
    4317/4318/16686. Ready once the health check reports OK and the query API answers.

    Args:
        otlp_grpc_port, otlp_http_port: OTLP receiver ports (default: free ones).
        query_port: query HTTP API and UI (``/api/traces/<id>``, ``/search``).
        workdir: config + log directory (default: temporary, removed by ``close()``).
        max_traces: traces kept in memory.
    """

    name = "jaeger"
    startup_timeout = 60.0
    stop_timeout = 15.0

    def __init__(
        self,
        *,
        otlp_grpc_port: int | None = None,
        otlp_http_port: int | None = None,
        query_port: int | None = None,
        workdir: str | Path | None = None,
        startup_timeout: float | None = None,
        max_traces: int = 100_000,
    ) -> None:
        binary = cache_dir() / "bin" / "jaeger"
        if not binary.is_file():
            raise ServersNotInstalledError(
                f"jaeger not found at {binary}: run `make servers` "
                "(bash deploy/scripts/install_jaeger.sh builds it, ~6 min once per machine)"
            )
        super().__init__(workdir, startup_timeout)
        self._binary = binary
        self._auto_ports = otlp_grpc_port is None and otlp_http_port is None and query_port is None
        self.otlp_grpc_port = otlp_grpc_port or free_port()
        self.otlp_http_port = otlp_http_port or free_port()
        self.query_port = query_port or free_port()
        self._pick_internal_ports()
        self.max_traces = max_traces
        self.config_path = self.workdir / "jaeger.yaml"

    def _pick_internal_ports(self) -> None:
        self.query_grpc_port, self.health_port, self.metrics_port = (
            free_port(),
            free_port(),
            free_port(),
        )

    def _pick_ports(self) -> None:
        self.otlp_grpc_port, self.otlp_http_port, self.query_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self._pick_internal_ports()

    @property
    def otlp_http_endpoint(self) -> str:
        """The OTLP/HTTP traces URL (``telemetry.otlp_endpoint`` of ``adqc serve``)."""
        return f"http://{LOOPBACK}:{self.otlp_http_port}/v1/traces"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """``127.0.0.1:<port>`` of the OTLP gRPC receiver."""
        return f"{LOOPBACK}:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        """Base URL of the query API and UI, ``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self.query_port}"

    def config(self) -> dict[str, Any]:
        """The Jaeger (OpenTelemetry Collector) configuration this server runs."""
        at = f"{LOOPBACK}:"
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {
                    "resource": {"service.name": "jaeger"},
                    "metrics": {
                        "level": "basic",
                        "readers": [
                            {
                                "pull": {
                                    "exporter": {
                                        "prometheus": {"host": LOOPBACK, "port": self.metrics_port}
                                    }
                                }
                            }
                        ],
                    },
                    "logs": {"level": "info"},
                },
            },
            "extensions": {
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"{at}{self.health_port}"}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"{at}{self.query_port}"},
                    "grpc": {"endpoint": f"{at}{self.query_grpc_port}"},
                },
                "jaeger_storage": {
                    "backends": {"memstore": {"memory": {"max_traces": self.max_traces}}}
                },
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"{at}{self.otlp_grpc_port}"},
                        "http": {"endpoint": f"{at}{self.otlp_http_port}"},
                    }
                }
            },
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def _prepare(self) -> None:
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _command(self) -> list[str]:
        return [str(self._binary), "--config", str(self.config_path)]

    def _get_json(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        return _get_json(f"{self.query_url}{path}", timeout)

    def _ready(self) -> bool:
        url = f"http://{LOOPBACK}:{self.health_port}/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
        return self._get_json("/api/services", timeout=2)[0] == 200 and port_open(
            self.otlp_http_port
        )

    def services(self) -> list[str]:
        """Service names that sent spans."""
        status, body = self._get_json("/api/services")
        return sorted(body.get("data") or []) if status == 200 and body else []

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace ``trace_id`` (see :func:`jaeger_trace`)."""
        return jaeger_trace(self.query_url, trace_id)


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body or b"null")
        except ValueError:
            return err.code, body.decode(errors="replace")


def jaeger_trace(query_url: str, trace_id: str) -> dict[str, Any] | None:
    """Trace ``trace_id`` (32 hex) from a Jaeger query API (``/api/traces/<id>``); None when
    not (yet) stored. Jaeger's JSON: ``spans`` (``operationName``, ``references``,
    ``processID``, ``tags``) and ``processes`` (``serviceName`` by process id)."""
    status, body = _get_json(f"{query_url.rstrip('/')}/api/traces/{trace_id}")
    if status != 200 or not isinstance(body, dict) or not body.get("data"):
        return None
    return dict(body["data"][0])
