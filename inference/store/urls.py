"""Store URLs and their passwords: keep them out of files and logs, add them back from a secret.

A model repository, an example config or a log line carries a store URL *without* its password;
the process that connects adds the password from ``ADQC_REDIS_PASSWORD`` or from the file named
by ``ADQC_REDIS_PASSWORD_FILE`` (a mounted Kubernetes secret) with :func:`with_secret_password`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

PASSWORD_ENV = "ADQC_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "ADQC_REDIS_PASSWORD_FILE"


def _netloc(user: str | None, password: str | None, host: str) -> str:
    if password is None:
        return f"{user}@{host}" if user else host
    return f"{user or ''}:{password}@{host}"


def split_password(url: str) -> tuple[str, str | None]:
    """``(url without its password, the password or None)``; the user name is kept."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] or None
    return urlunsplit(parts._replace(netloc=_netloc(user, None, host))), parts.password


def redact(url: str) -> str:
    """The URL with ``***`` for its password (for messages and logs)."""
    if split_password(url)[1] is None:
        return url
    parts = urlsplit(url)
    user, host = parts.username, parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=_netloc(user, "***", host)))


def secret_password(env: Mapping[str, str] | None = None) -> str | None:
    """The password from ``ADQC_REDIS_PASSWORD``, else from the file ``ADQC_REDIS_PASSWORD_FILE``
    (trailing newline stripped), else None."""
    env = os.environ if env is None else env
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    path = env.get(PASSWORD_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{PASSWORD_FILE_ENV}={path}: cannot read it: {exc}") from exc
    return None


def with_secret_password(url: str, env: Mapping[str, str] | None = None) -> str:
    """``url`` with the secret password added when it has none (unchanged otherwise)."""
    parts = urlsplit(url)
    if parts.password is not None or parts.scheme not in ("redis", "rediss"):
        return url
    password = secret_password(env)
    if password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = _netloc(userinfo or None, quote(password, safe=""), host)
    return urlunsplit(parts._replace(netloc=netloc))
