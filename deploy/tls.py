"""Throw-away TLS material for tests and local runs: a CA, and server/client certificates it signs.

Generated with the ``openssl`` command line (Debian's openssl 3) into a directory the caller owns;
nothing here is ever committed. Every certificate is valid for ``127.0.0.1`` and ``localhost``
(so clients can keep hostname checking on) for a few days, and every key is an unencrypted
PKCS#8 PEM file, the form both Python's ``ssl`` and Kafka's PEM key stores read.

Example::

    ca = make_ca(tmp_path)
    server = ca.issue("broker")
    client = ca.issue("client")
    # server.cert, server.key, client.cert, client.key, ca.cert: paths to PEM files
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 3
SUBJECT_ALT_NAMES = "IP:127.0.0.1,DNS:localhost"


class TlsToolError(RuntimeError):
    """openssl is missing or failed (the message quotes its output)."""


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise TlsToolError("openssl not found on PATH (apt-get install openssl)")
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise TlsToolError(f"openssl {' '.join(args)} failed:\n{done.stderr[-2000:]}")


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key (PEM paths); ``bundle`` = key + certificate in one file."""

    name: str
    cert: Path
    key: Path

    @property
    def bundle(self) -> Path:
        """Key then certificate in one PEM file (Kafka's ``ssl.keystore.type=PEM`` location)."""
        path = self.cert.with_name(f"{self.name}-bundle.pem")
        if not path.exists():
            path.write_text(self.key.read_text() + self.cert.read_text())
            path.chmod(0o600)
        return path


@dataclass(frozen=True)
class LocalCA:
    """A self-signed certificate authority in ``directory`` (``cert`` is the trust anchor)."""

    directory: Path
    cert: Path
    key: Path

    def issue(self, name: str, *, san: str = SUBJECT_ALT_NAMES) -> CertPair:
        """Sign a new key for ``name`` (server and client use, valid for ``san``)."""
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        ext = self.directory / f"{name}.ext"
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={name}", cwd=self.directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", str(DAYS), "-sha256",
            "-extfile", str(ext), cwd=self.directory,
        )  # fmt: skip
        key.chmod(0o600)
        return CertPair(name, cert, key)


def make_ca(directory: str | Path, name: str = "adqc-test-ca") -> LocalCA:
    """Create a CA (key + self-signed certificate) in ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", str(DAYS), "-sha256", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return LocalCA(directory, cert, key)
