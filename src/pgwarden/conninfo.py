"""Where to connect, and how to print it without the password.

Resolution order (the first that is set wins):

1. the DSN given explicitly (``--dsn``; a ``postgresql://`` URL or ``key=value`` conninfo);
2. ``$DATABASE_URL`` (the Heroku / twelve-factor convention);
3. libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``, ``PGPASSWORD``,
   ``PGSERVICE``, ``~/.pgpass``) and defaults (the local Unix socket), exactly as ``psql`` does.

All parsing is psycopg's (``psycopg.conninfo``), i.e. libpq's; SQLAlchemy-style URLs
(``postgresql+psycopg://``, ``postgres+asyncpg://``) are accepted and normalised.

Every connection pgwarden opens for itself carries ``application_name=pgwarden-<command>``
(so it can exclude itself from what it reports and kills) and a ``connect_timeout``
(default 5 s, libpq's own default is to wait forever).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConfigError, PgwardenError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ENV_DSN",
    "Target",
    "check_values",
    "connect",
    "connect_error",
    "redact",
    "resolve",
]

#: Seconds pgwarden waits for a connection by default (libpq waits forever: connect_timeout=0).
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Environment variable read when no DSN is given.
ENV_DSN = "DATABASE_URL"

_MASK = "***"
_URL_RE = re.compile(r"^(postgres(?:ql)?)(\+[a-z0-9_]+)?://", re.IGNORECASE)
_URL_USERINFO_RE = re.compile(r"(://[^/@:?#]*:)([^@/?#]*)(@)")
#: libpq parameters that carry a secret (libpq-connect.html#LIBPQ-PARAMKEYWORDS): never shown.
SECRET_KEYWORDS = (
    "password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key",
)
_SECRET_ALT = "|".join(SECRET_KEYWORDS)
_KV_PASSWORD_RE = re.compile(rf"(\b(?:{_SECRET_ALT})\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)",
                             re.IGNORECASE)
_QUERY_PASSWORD_RE = re.compile(rf"([?&](?:{_SECRET_ALT})=)([^&#]*)", re.IGNORECASE)


def _is_url(dsn: str) -> bool:
    return bool(_URL_RE.match(dsn.strip()))


def _normalise(dsn: str) -> str:
    """Drop a SQLAlchemy driver suffix (``postgresql+psycopg://`` -> ``postgresql://``)."""
    dsn = dsn.strip()
    m = _URL_RE.match(dsn)
    if m and m.group(2):
        return "postgresql://" + dsn[m.end():]
    return dsn


def _regex_redact(text: str) -> str:
    text = _URL_USERINFO_RE.sub(lambda m: m.group(1) + _MASK + m.group(3), text)
    text = _KV_PASSWORD_RE.sub(lambda m: m.group(1) + _MASK, text)
    return _QUERY_PASSWORD_RE.sub(lambda m: m.group(1) + _MASK, text)


def redact(dsn: str) -> str:
    """Return ``dsn`` with every secret (the password, and libpq's other secret parameters in
    :data:`SECRET_KEYWORDS`) replaced by ``***``, in the same form (URL or key=value).

    Never raises: a DSN that does not parse is masked by pattern instead.

    >>> redact("postgresql://app:s3cret@db:5432/shop")
    'postgresql://app:***@db:5432/shop'
    >>> redact("host=db password=s3cret")
    "host=db password=***"
    """
    if not dsn:
        return dsn
    if _is_url(dsn):
        return _regex_redact(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return _regex_redact(dsn)
    for key in SECRET_KEYWORDS:
        if params.get(key):
            params[key] = _MASK
    return make_conninfo("", **params)


def _has_password(dsn: str) -> bool:
    return redact(dsn) != dsn or "password" in dsn.lower()


#: Values libpq accepts for its enumerated parameters (libpq-connect.html#LIBPQ-PARAMKEYWORDS;
#: libpq compares the TLS versions case-insensitively). Parameters not listed here are still
#: checked by libpq itself when connecting, and :func:`connect_error` reports its verdict as a
#: usage error (:class:`ConfigError`), so an invalid value never reaches the network twice.
_ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
    "channel_binding": ("disable", "prefer", "require"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "replication": ("true", "on", "yes", "1", "false", "off", "no", "0", "database"),
}
_CASELESS = ("ssl_min_protocol_version", "ssl_max_protocol_version", "replication")
#: Parameters libpq parses as integers (seconds, or milliseconds for tcp_user_timeout).
_INT_PARAMS = (
    "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout",
)
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def check_values(params: Mapping[str, Any], source: str = "the DSN") -> None:
    """Check the values of libpq's typed parameters before any connection attempt: ports
    (1-65535, one per host), integers (``connect_timeout``, keepalives, ``tcp_user_timeout``)
    and enumerations (``sslmode``, ``target_session_attrs``, ...).

    Raises:
        ConfigError: the first invalid value, with the parameter, where it came from and the
            allowed values (never the password: it is not a typed parameter).
    """
    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(
            f"invalid connection parameter (from {source}): {key}={str(value)[:80]!r}; "
            f"expected {allowed}"
        )

    for key, value in params.items():
        if value is None or value == "":
            continue
        text = str(value)
        if key == "port":
            for part in text.split(","):
                part = part.strip()
                if part and not (part.isdigit() and 1 <= int(part) <= 65535):
                    raise bad(key, value, "a port number from 1 to 65535 (one per host)")
        elif key in _INT_PARAMS:
            if not _INT_RE.match(text):
                raise bad(key, value, "a whole number"
                          + (" of milliseconds" if key == "tcp_user_timeout" else
                             " of seconds" if key != "keepalives" and key != "keepalives_count"
                             else ""))
        elif key in _ENUM_VALUES:
            allowed = _ENUM_VALUES[key]
            ok = (text.lower() in (a.lower() for a in allowed) if key in _CASELESS
                  else text in allowed)
            if not ok:
                raise bad(key, value, "one of " + ", ".join(allowed))


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved connection target.

    Attributes:
        conninfo: the conninfo string to pass to psycopg (contains the password if any:
            never print it; print :attr:`redacted`).
        redacted: the same without the password, for messages and logs.
        source: where it came from: the option (``"--dsn"``, ``"--pgbouncer"``),
            ``"DATABASE_URL"`` or ``"libpq environment"``.
        host: the effective host (``None`` for libpq's default Unix socket).
        port: the effective port.
        dbname: the effective database name.
        user: the effective user name.
        connect_timeout: seconds libpq waits per host.
    """

    conninfo: str
    redacted: str
    source: str
    host: str | None
    port: int
    dbname: str
    user: str
    connect_timeout: float

    @property
    def where(self) -> str:
        """``user@host:port/dbname`` (no password), for one-line messages."""
        host = self.host or "local socket"
        return f"{self.user}@{host}:{self.port}/{self.dbname}"

    def with_params(self, **params: Any) -> Target:
        """A copy with conninfo parameters changed (e.g. ``user=...``)."""
        conninfo = make_conninfo(self.conninfo, **params)
        return _build(conninfo, self.source)


def _libpq_defaults() -> dict[str, str]:
    """libpq's defaults including the PG* environment (``PQconndefaults``)."""
    out: dict[str, str] = {}
    for opt in pq.Conninfo.get_defaults():
        if opt.val is not None:
            out[opt.keyword.decode()] = opt.val.decode()
    return out


def _build(conninfo: str, source: str) -> Target:
    params = conninfo_to_dict(conninfo)
    defaults = _libpq_defaults()
    check_values({k: v for k, v in defaults.items() if not params.get(k)},
                 "libpq's PG* environment variables")

    def eff(key: str, fallback: str = "") -> str:
        value = params.get(key)
        if value is None or value == "":
            value = defaults.get(key, fallback)
        return str(value)

    host = eff("host") or eff("hostaddr") or None
    port = int(eff("port", "5432").split(",")[0].strip() or "5432")  # checked by check_values
    user = eff("user")
    dbname = eff("dbname") or user
    try:
        timeout = float(eff("connect_timeout", "0") or 0)
    except ValueError:
        timeout = 0.0
    return Target(
        conninfo=conninfo,
        redacted=redact(conninfo),
        source=source,
        host=host,
        port=port,
        dbname=dbname,
        user=user,
        connect_timeout=timeout,
    )


def resolve(
    dsn: str | None = None,
    *,
    command: str | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    environ: Mapping[str, str] | None = None,
    option: str = "--dsn",
    **params: Any,
) -> Target:
    """Resolve where to connect: ``dsn`` > ``$DATABASE_URL`` > libpq's environment and defaults.

    Args:
        dsn: a ``postgresql://`` URL or ``key=value`` conninfo; ``None`` or ``""`` to fall through.
        command: when given, ``application_name`` is forced to ``pgwarden-<command>``.
        connect_timeout: seconds (float, rounded up to whole seconds for libpq); applied when the
            DSN sets none. ``None`` leaves libpq's default (wait forever).
        environ: environment to read ``DATABASE_URL`` from (default ``os.environ``).
        option: the option ``dsn`` was given with, named in messages (``--pgbouncer``).
        params: further conninfo parameters that override the DSN's.

    Returns:
        A :class:`Target`.

    Raises:
        ConfigError: the DSN does not parse; the message is redacted and says what form is expected.
    """
    import os

    env = os.environ if environ is None else environ
    if dsn:
        source, raw = option, dsn
    elif env.get(ENV_DSN):
        source, raw = ENV_DSN, env[ENV_DSN]
    else:
        source, raw = "libpq environment", ""
    raw = _normalise(raw)
    try:
        given = conninfo_to_dict(raw)
    except psycopg.Error as exc:
        detail = str(exc).strip()
        if _has_password(raw):
            detail = re.sub(r'"[^"]*"', '"…"', detail)
        raise ConfigError(
            f"malformed DSN (from {source}): {detail}; expected a URL like "
            "postgresql://user@host:5432/dbname or key=value pairs like "
            "'host=db port=5432 dbname=app user=app'"
        ) from None
    check_values(given, source)
    check_values(params, "keyword arguments")
    extra: dict[str, Any] = dict(params)
    if command:
        extra["application_name"] = f"pgwarden-{command}"
    if connect_timeout is not None and not given.get("connect_timeout"):
        if connect_timeout <= 0:
            raise ConfigError("connect_timeout must be > 0 seconds")
        # libpq takes whole seconds and treats 1 as 2: round up, minimum 2.
        extra["connect_timeout"] = max(2, math.ceil(connect_timeout))
    conninfo = make_conninfo(raw, **extra)
    return _build(conninfo, source)


def connect_error(target: Target, exc: BaseException) -> PgwardenError:
    """The pgwarden error for a failed connection attempt to ``target``, classified by
    :func:`pgwarden.diagnose.classify` (the one place that says what a failure means).

    Returns:
        :class:`ConfigError` when the connection parameters are invalid (a usage error),
        :class:`ServerFullError` when the server has no slot, else :class:`ConnectError`; the
        message says where (no password), what the server or libpq said, what it means and
        the first thing to do (the diagnosis's first fix).
    """
    from .diagnose import classify
    from .errors import ConnectError, ServerFullError

    failure = classify(exc, connecting=True)
    if failure.kind == "invalid":
        return ConfigError(
            f"invalid connection parameter (from {target.source}): {failure.said}; the allowed "
            "values are in libpq's documentation (libpq-connect.html#LIBPQ-PARAMKEYWORDS)"
        )
    meaning = f" ({failure.title})" if failure.title else ""
    fixes = failure.diagnosis.fixes if failure.diagnosis is not None else ()
    todo = f"; {fixes[0]}" if fixes else ""
    cls = ServerFullError if failure.kind == "server_full" else ConnectError
    return cls(
        f"cannot connect to {target.where}: {failure.said}{meaning}{todo}",
        target=target.redacted,
        server_said=failure.said,
        diagnosis_id=failure.diagnosis.id if failure.diagnosis is not None else None,
        sqlstate=failure.sqlstate,
        kind=failure.kind,
    )


def is_pgbouncer_console(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` is connected to PgBouncer's admin console (database ``pgbouncer``):
    the console reports ``server_version`` as ``<version>/bouncer`` at startup (PgBouncer's
    admin.c), where PostgreSQL and databases behind PgBouncer report PostgreSQL's version."""
    return (conn.info.parameter_status("server_version") or "").endswith("/bouncer")


def connect(target: Target, *, autocommit: bool = True,
            console: bool | None = False) -> psycopg.Connection[Any]:
    """Open pgwarden's own connection to ``target``.

    Args:
        console: what must be at the other end: ``False`` a PostgreSQL database (directly or
            through a pooler), ``True`` PgBouncer's admin console, ``None`` either.

    Raises:
        ServerFullError: the server has no free slot for this role (SQLSTATE 53300).
        ConnectError: any other failure to connect (:func:`connect_error` says which).
        ConfigError: libpq rejected a connection parameter's value; or the other end is not
            what ``console`` asks for (a usage error naming the option to use).
    """
    try:
        conn = psycopg.connect(target.conninfo, autocommit=autocommit,
                               **({} if console is False else {"prepare_threshold": None}))
    except psycopg.Error as exc:
        raise connect_error(target, exc) from None
    if console is None or is_pgbouncer_console(conn) == console:
        return conn
    conn.close()
    if console:
        raise ConfigError(
            f"{target.where} (from {target.source}) is not PgBouncer's admin console: give "
            f"{target.source} PgBouncer's address with dbname=pgbouncer and a user listed in its "
            "admin_users or stats_users")
    raise ConfigError(
        f"{target.where} (from {target.source}) is PgBouncer's admin console, not a PostgreSQL "
        f"database: give it as --pgbouncer, and {target.source} a database (on the server or "
        "through PgBouncer)")
