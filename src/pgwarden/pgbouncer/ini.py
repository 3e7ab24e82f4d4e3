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
import ipaddress
import re
import secrets
from collections.abc import Mapping

__all__ = ["IniValue", "UnwritableValue", "auth_file_text", "checked", "db_entry", "ini_text",
           "scram_secret", "secret_kind"]

IniValue = str | int | float | bool

_PLAIN_NAME = re.compile(r"^[_0-9A-Za-z]+$")
_SAFE_VALUE = re.compile(r"^[^\s'\\]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What a user or database name may not hold: it is written bare in lists (``admin_users =
#: a,b``), as a key, and quoted in the auth file.
_NAME_BAD = re.compile(r"[\s,\"'\\;#\x00-\x1f\x7f]")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
#: PostgreSQL's longest name (NAMEDATALEN - 1 bytes).
_MAX_NAME_BYTES = 63
#: ``[pgbouncer]`` settings whose value is a name, or a list of addresses.
_SETTING_KINDS = {"admin_users": "name", "stats_users": "name", "auth_user": "name",
                  "listen_addr": "addresses"}


class UnwritableValue(ValueError):
    """A value that cannot be written into ``pgbouncer.ini`` or the auth file as it is (it
    would break a line, add one, or split a list). The message names ``what`` and, unless it
    is a secret, shows the value escaped on one line."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"{what}: {problem}")
        self.what = what
        self.problem = problem


def checked(value: str, *, what: str, kind: str = "text", secret: bool = False) -> str:
    """``value`` when it can be written into PgBouncer's files as ``kind``: the one check every
    value written by :func:`ini_text`, :func:`db_entry` and :func:`auth_file_text` goes
    through (callers run it early to say where a bad value came from).

    Kinds: ``text`` (a setting's value, a path, a password or secret: no control characters,
    no line breaks), ``name`` (a user or database name: 1-63 bytes, no whitespace, control
    characters or any of ``,"'\\;#``), ``addresses`` (``listen_addr``: ``*`` or a comma-separated
    list of IP addresses and host names).

    Raises:
        UnwritableValue: what is wrong (never showing a secret).
    """
    shown = "the value" if secret else f"{value!r}"
    if kind == "name":
        bad = _NAME_BAD.search(value)
        if not value or len(value.encode()) > _MAX_NAME_BYTES or bad:
            why = (f"contains {bad.group()!r}" if bad else "is empty" if not value
                   else f"is longer than {_MAX_NAME_BYTES} bytes")
            raise UnwritableValue(what, f"{shown} {why}; a name PgBouncer's files can hold "
                                  "has 1-63 bytes and no whitespace, control characters or "
                                  "any of ,\"'\\;#")
    elif kind == "addresses":
        items = [item.strip() for item in value.split(",")]
        for item in items:
            if item == "*" or _is_ip(item) or _HOST.match(item):
                continue
            raise UnwritableValue(what, f"{shown} is not * or a comma-separated list of IP "
                                  "addresses and host names (like 127.0.0.1 or 0.0.0.0,::)")
    elif kind == "text":
        if _CONTROL.search(value):
            raise UnwritableValue(what, f"{shown} contains a line break or another control "
                                  "character, which would break the line it is written on")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _format(value: IniValue) -> str:
    """A ``[pgbouncer]`` value: booleans as 1/0 (PgBouncer's form), floats without a useless
    ``.0``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _name(name: str, what: str) -> str:
    """A database (or user) name as a key of ``[databases]`` / ``[users]``."""
    if name == "*" or _PLAIN_NAME.match(name):
        return name
    checked(name, what=what, kind="name")
    return '"' + name.replace('"', '""') + '"'


def db_entry(params: Mapping[str, IniValue]) -> str:
    """A ``[databases]`` value: ``host=... port=... dbname=...`` (values with spaces or quotes
    are single-quoted, libpq style)."""
    parts = []
    for key, value in params.items():
        text = checked(_format(value), what=key)
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

    Raises:
        UnwritableValue: a name or value that cannot be written (:func:`checked`).
    """
    comments = comments or {}
    out: list[str] = [f"; {line}".rstrip() for line in header.splitlines()]
    if out:
        out.append("")
    out.append("[databases]")
    for name, params in databases.items():
        out.append(f"{_name(name, 'database name')} = {db_entry(params)}")
    if users:
        out += ["", "[users]"]
        for name, params in users.items():
            out.append(f"{_name(name, 'user name')} = {db_entry(params)}")
    out += ["", "[pgbouncer]"]
    for key, value in settings.items():
        if key in comments:
            out.extend(f"; {line}" for line in comments[key].splitlines())
        text = _format(value)
        kind = _SETTING_KINDS.get(key, "text")
        if kind == "name":  # a list of names
            for item in text.split(","):
                checked(item, what=key, kind="name")
        else:
            checked(text, what=key, kind=kind)
        out.append(f"{key} = {text}")
    return "\n".join(out) + "\n"


def auth_file_text(entries: Mapping[str, str]) -> str:
    """The auth file: ``"user" "password-or-secret"`` per line (plain text, ``md5...`` or a
    ``SCRAM-SHA-256$...`` secret), double quotes doubled.

    Raises:
        UnwritableValue: a user name or secret that cannot be written (:func:`checked`).
    """
    def q(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    for user, secret in entries.items():
        checked(user, what="user name", kind="name")
        checked(secret, what=f"the password or secret of {user}", secret=True)
    return "".join(f"{q(user)} {q(secret)}\n" for user, secret in entries.items())


_MD5_HASH = re.compile(r"^md5[0-9a-f]{32}$")


def secret_kind(secret: str) -> str:
    """What an auth file entry holds: ``scram`` (a ``SCRAM-SHA-256$...`` secret), ``md5`` (an
    ``md5...`` hash: PgBouncer needs ``auth_type = md5`` for it) or ``plain`` (a password)."""
    if secret.startswith("SCRAM-SHA-256$"):
        return "scram"
    if _MD5_HASH.match(secret):
        return "md5"
    return "plain"


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
