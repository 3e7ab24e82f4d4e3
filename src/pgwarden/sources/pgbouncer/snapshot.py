"""Read PgBouncer's admin console into frozen records.

The admin console (database ``pgbouncer``) speaks only the simple query protocol ("The admin
console currently only supports the simple query protocol", pgbouncer(1)) and knows no
transactions. pgwarden's connection to it therefore has ``autocommit=True`` (no ``BEGIN``) and
``prepare_threshold=None`` (psycopg would otherwise prepare a command after 5 executions, i.e.
switch to the extended protocol), and every command runs with ``prepare=False`` and without
parameters: psycopg then sends a simple ``Query`` message. The commands live in
``queries/*.sql`` (one each, first-line comment); the console rejects comments ("invalid
command"), so they are stripped before sending.

Rows bind by column name through :func:`record_row`, a psycopg row factory that ignores
columns the record does not know (newer PgBouncers) and leaves fields of columns it does not
get (older ones) at their defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowMaker, dict_row

from ...conninfo import Target
from ...conninfo import connect as conninfo_connect
from ...pgbouncer.version import parse_version
from .records import ADMIN_DATABASE, BouncerSnapshot, Connection, Database, Pool, Stats

__all__ = ["command", "connect", "read_version", "record_row", "take"]

R = TypeVar("R")

#: Columns folded into one field: ``maxwait`` + ``maxwait_us`` -> seconds, etc.
_MICRO_PARTS = {"maxwait": "maxwait_us", "wait": "wait_us"}
#: Columns renamed across versions (1.24 renamed SHOW DATABASES' reserve_pool).
_ALIASES = {"reserve_pool_size": "reserve_pool"}
#: SHOW STATS columns in microseconds, stored as seconds.
_MICROSECONDS = frozenset({
    "total_xact_time", "total_query_time", "total_wait_time",
    "avg_xact_time", "avg_query_time", "avg_wait_time",
})
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S %Z", "%Y-%m-%d %H:%M:%S.%f %Z", "%Y-%m-%d %H:%M:%S")


@functools.cache
def command(name: str) -> bytes:
    """The admin console command ``queries/<name>.sql`` without its comment lines.

    Raises:
        FileNotFoundError: no such query file.
    """
    text = resources.files(__package__).joinpath("queries", f"{name}.sql").read_text("utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
    return " ".join(ln.strip() for ln in lines).rstrip(";").encode()


def _timestamp(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    text = str(value).strip()
    for fmt in _TIME_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


def _convert(name: str, kind: Any, value: Any) -> Any:
    """A column value as the record field ``name`` of declared type ``kind`` wants it."""
    if value is None:
        return None
    if name in _MICROSECONDS:
        return float(value) / 1_000_000
    text_kind = str(kind)
    if "datetime" in text_kind:
        return _timestamp(value)
    if "bool" in text_kind:
        return bool(int(value)) if not isinstance(value, bool) else value
    if "float" in text_kind:
        return float(value)
    if "int" in text_kind and isinstance(value, (int, Decimal, float, str)):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


def record_row(cls: type[R]) -> Callable[[Any], RowMaker[R]]:
    """A psycopg row factory making ``cls`` (a dataclass) from each row by column name.

    Unknown columns are ignored; missing ones keep the field's default; ``X`` + ``X_us`` pairs
    become seconds; ``SHOW STATS`` microseconds become seconds; text timestamps become aware
    datetimes (UTC).
    """
    fields = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def factory(cursor: Any) -> RowMaker[R]:
        names = [_ALIASES.get(d.name, d.name) for d in (cursor.description or ())]
        index = {n: i for i, n in enumerate(names)}

        def make(values: Sequence[Any]) -> R:
            kwargs: dict[str, Any] = {}
            for name, kind in fields.items():
                if name not in index:
                    continue
                value = _convert(name, kind, values[index[name]])
                if name in _MICRO_PARTS and _MICRO_PARTS[name] in index:
                    micro = values[index[_MICRO_PARTS[name]]] or 0
                    value = float(value or 0) + float(micro) / 1_000_000
                if value is None and name in ("ptr", "link", "tls", "application_name"):
                    value = ""
                if value is None and dataclasses.MISSING is not _default(cls, name):
                    value = _default(cls, name)
                kwargs[name] = value
            return cls(**kwargs)

        return make

    return factory


def _default(cls: type[Any], name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return dataclasses.MISSING
    return dataclasses.MISSING


def _rows(conn: psycopg.Connection[Any], name: str, cls: type[R]) -> list[R]:
    cur = conn.cursor(row_factory=record_row(cls))
    cur.execute(command(name), prepare=False)
    return list(cur.fetchall())


def connect(target: Target) -> psycopg.Connection[Any]:
    """pgwarden's connection to a PgBouncer admin console (``target``'s database should be
    ``pgbouncer``): autocommit, no prepared statements.

    Raises:
        ConnectError: it could not connect (classified by :func:`pgwarden.diagnose.classify`:
            refused, unknown user, "not allowed" for a user in neither ``admin_users`` nor
            ``stats_users``, ...).
        ConfigError: a connection parameter is invalid; or ``target`` is not an admin console
            (a PostgreSQL server, a database behind PgBouncer).
    """
    return conninfo_connect(target, console=True)


def read_version(conn: psycopg.Connection[Any]) -> str:
    """``SHOW VERSION``: ``PgBouncer 1.18.0``.

    Raises:
        psycopg.Error: not an admin console (PostgreSQL answers 42704, unrecognized
            configuration parameter "version").
    """
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(command("get_version"), prepare=False)
    row = cur.fetchone()
    return str(row["version"]) if row else ""


def take(conn: psycopg.Connection[Any]) -> BouncerSnapshot:
    """One look at PgBouncer through ``conn`` (from :func:`connect`): seven admin commands.

    Raises:
        psycopg.Error: PgBouncer went away, or refused a command (a ``stats_users`` member
            may run every SHOW but ``SHOW FDS``; pgwarden never runs that one).
    """
    started = time.perf_counter()
    text = read_version(conn)
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(command("get_config"), prepare=False)
    config = {str(r["key"]): "" if r["value"] is None else str(r["value"])
              for r in cur.fetchall()}

    def mine(rows: list[Any]) -> tuple[Any, ...]:
        return tuple(r for r in rows if getattr(r, "database", None) != ADMIN_DATABASE)

    snapshot = BouncerSnapshot(
        version=parse_version(text),
        version_text=text,
        pools=mine(_rows(conn, "get_pools", Pool)),
        stats=mine(_rows(conn, "get_stats", Stats)),
        clients=mine(_rows(conn, "get_clients", Connection)),
        servers=mine(_rows(conn, "get_servers", Connection)),
        databases=tuple(d for d in _rows(conn, "get_databases", Database)
                        if d.name != ADMIN_DATABASE),
        config=config,
        duration=0.0,
    )
    return dataclasses.replace(snapshot, duration=time.perf_counter() - started)
