"""PgBouncer's file formats, written from records: ``pgbouncer.ini`` and the auth file.

Pure functions (no I/O). The formats are PgBouncer's (pgbouncer(5), "SECTION [DATABASES]" and
"AUTHENTICATION FILE FORMAT"):

- ``pgbouncer.ini``: sections ``[databases]``, ``[users]``, ``[pgbouncer]``; ``key = value``
  lines; a database entry's value is a libpq-like ``key=value`` string; database names other
  than ``_0-9A-Za-z`` are double-quoted SQL identifiers.
- the auth file: one ``"user" "password-or-secret"`` line per user, a double quote inside a
  field written twice.

:func:`scram_secret` computes a PostgreSQL SCRAM-SHA-256 verifier (RFC 5802 / RFC 5803, the
format ``pg_authid.rolpassword`` holds) so that files and SQL can carry a verifier instead of a
password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

__all__ = ["IniValue", "auth_file_text", "db_entry", "ini_text", "scram_secret"]

IniValue = str | int | float | bool

_PLAIN_NAME = re.compile(r"^[_0-9A-Za-z]+$")
_SAFE_VALUE = re.compile(r"^[^\s'\\]+$")


def _format(value: IniValue) -> str:
    """A ``[pgbouncer]`` value: booleans as 1/0 (PgBouncer's form), floats without a useless
    ``.0``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _name(name: str) -> str:
    """A database (or user) name as a key of ``[databases]`` / ``[users]``."""
    if name == "*" or _PLAIN_NAME.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def db_entry(params: Mapping[str, IniValue]) -> str:
    """A ``[databases]`` value: ``host=... port=... dbname=...`` (values with spaces or quotes
    are single-quoted, libpq style)."""
    parts = []
    for key, value in params.items():
        text = _format(value)
        if not _SAFE_VALUE.match(text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def ini_text(
    settings: Mapping[str, IniValue],
    databases: Mapping[str, Mapping[str, IniValue]],
    *,
    users: Mapping[str, Mapping[str, IniValue]] | None = None,
    comments: Mapping[str, str] | None = None,
    header: str = "",
) -> str:
    """The text of a ``pgbouncer.ini``.

    Args:
        settings: the ``[pgbouncer]`` section, in order.
        databases: database name (``*`` for the fallback) -> connection parameters.
        users: user name -> per-user settings (``pool_mode``, ``max_user_connections``).
        comments: setting name -> a comment written on the line above it (why this value).
        header: lines (without ``;``) written as comments at the top.
    """
    comments = comments or {}
    out: list[str] = [f"; {line}".rstrip() for line in header.splitlines()]
    if out:
        out.append("")
    out.append("[databases]")
    for name, params in databases.items():
        out.append(f"{_name(name)} = {db_entry(params)}")
    if users:
        out += ["", "[users]"]
        for name, params in users.items():
            out.append(f"{_name(name)} = {db_entry(params)}")
    out += ["", "[pgbouncer]"]
    for key, value in settings.items():
        if key in comments:
            out.extend(f"; {line}" for line in comments[key].splitlines())
        out.append(f"{key} = {_format(value)}")
    return "\n".join(out) + "\n"


def auth_file_text(entries: Mapping[str, str]) -> str:
    """The auth file: ``"user" "password-or-secret"`` per line (plain text, ``md5...`` or a
    ``SCRAM-SHA-256$...`` secret), double quotes doubled."""
    def q(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    return "".join(f"{q(user)} {q(secret)}\n" for user, secret in entries.items())


def scram_secret(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier for ``password``:
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802 section 3, the
    format of RFC 5803 that ``pg_authid.rolpassword`` holds; 4096 iterations is PostgreSQL's
    default ``scram_iterations``). The password is used as given (PostgreSQL applies SASLprep,
    which leaves ASCII passwords unchanged).

    Raises:
        ValueError: ``iterations`` below 1.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (got {iterations})")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
