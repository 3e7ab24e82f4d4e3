"""Is a connection pooler (PgBouncer) between a client and PostgreSQL, in which pool mode, and
does it track prepared statements? Detection from a client connection, told or observed, for
pgwarden's pools and for the pools ``pgwarden.instrument()`` instruments.

What is observed, once per pool, on a connection nobody else uses yet:

1. **A pooler at all** (the signal ``pgwarden check`` uses): libpq's backend pid is the one the
   server named in its BackendKeyData message; PgBouncer answers with a random cancel key of
   its own, so it differs from ``pg_backend_pid()`` run on the real server (PgBouncer's docs,
   "Cancel requests"; PostgreSQL protocol docs, "BackendKeyData"). One round trip; a direct
   connection stops here.
2. **Whether it tracks prepared statements**: inside one transaction (so on one server
   connection) the driver prepares a protocol-level *named* statement that reads its own row
   of ``pg_prepared_statements``. PgBouncer 1.21+ with ``max_prepared_statements`` > 0 renames
   every client statement on the server (``PGBOUNCER_<n>``: PgBouncer's docs,
   ``max_prepared_statements``); an older PgBouncer, or one with tracking off, passes the
   driver's own name through (psycopg ``_pg3_<n>``, asyncpg ``__asyncpg_stmt_<n>__``). The
   statement is deallocated again in the same transaction where it kept its name.
3. **The pool mode** (pgwarden's pools only, which can open a second connection): the second
   connection asks ``pg_backend_pid()`` right after the first one finished a transaction; only
   transaction (or statement) mode lets two client connections share a server session
   (PgBouncer reuses the most recently released server first). Not seeing it proves nothing
   (``server_round_robin``, other clients): the mode is then unknown, which the rules treat as
   transaction mode (the side on which nothing breaks).

The version of PgBouncer cannot be read from a client connection (only the admin console
answers ``SHOW VERSION``). A PgBouncer seen renaming statements is treated as the oldest that
does, 1.21: enough for asyncpg, not for psycopg, which needs 1.22
(:mod:`pgwarden.pgbouncer.drivers`). Tell it the version (``pgbouncer="1.22.1"`` or a
:class:`Pooler`) to lift that.

The rules of what each driver needs are :func:`pgwarden.pgbouncer.drivers.advice`;
:meth:`Pooler.advice` only says which PgBouncer to ask them for.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .drivers import DriverAdvice, advice
from .version import Version, parse_version

__all__ = [
    "DIRECT",
    "DRIVER_PREFIXES",
    "POOL_MODES",
    "SERVER_PID_QUERY",
    "Pooler",
    "adetect_asyncpg",
    "adetect_psycopg",
    "coerce",
    "detect_psycopg",
    "from_names",
    "from_pids",
    "names_probe",
]

POOL_MODES = ("session", "transaction", "statement")

#: The names the drivers give their own named statements (psycopg's ``PrepareManager``:
#: ``_pg3_<n>``; asyncpg's ``Connection._get_unique_id("stmt")``: ``__asyncpg_stmt_<n>__``).
DRIVER_PREFIXES = {"psycopg": "_pg3_", "asyncpg": "__asyncpg_"}

#: The oldest PgBouncer that tracks prepared statements (1.21.0, "The one with prepared
#: statements", PgBouncer's changelog) and one that does not (1.18, Debian 12's).
_TRACKING = Version(1, 21)
_NOT_TRACKING = Version(1, 18)


@dataclass(frozen=True, slots=True)
class Pooler:
    """What sits between a pool and PostgreSQL.

    Attributes:
        kind: ``direct`` (nothing), ``pgbouncer`` (told, or seen renaming prepared
            statements ``PGBOUNCER_<n>``) or ``pooler`` (something answered with a cancel key
            that is not the server's backend pid: PgBouncer or another pooler).
        pool_mode: ``session``, ``transaction``, ``statement`` or ``None`` (not determined:
            the rules treat it as ``transaction``).
        version: the PgBouncer version when told, else ``None``.
        max_prepared_statements: PgBouncer's setting when told (``None``: the version's
            default, or unknown).
        tracks_prepared: whether it keeps protocol-level named prepared statements working
            (observed or derived from what was told; ``None``: unknown, treated as ``False``).
        evidence: how this was found out, one line (logged).
    """

    kind: str
    pool_mode: str | None = None
    version: Version | None = None
    max_prepared_statements: int | None = None
    tracks_prepared: bool | None = None
    evidence: str = ""

    @property
    def behind(self) -> bool:
        """Whether there is a pooler at all."""
        return self.kind != "direct"

    @property
    def shares_sessions(self) -> bool:
        """Whether client connections share server sessions (transaction or statement mode,
        or a mode not determined)."""
        return self.behind and self.pool_mode != "session"

    def advice(self, driver: str, *, libpq_version: int | None = None) -> DriverAdvice:
        """What ``driver`` (:data:`pgwarden.pgbouncer.drivers.DRIVERS`) needs behind this
        pooler: :func:`pgwarden.pgbouncer.drivers.advice` for the told version, else for the
        oldest PgBouncer that behaves as observed (1.21 when it renames prepared statements,
        1.18 when it does not); an unknown pool mode counts as ``transaction``.

        Raises:
            ValueError: an unknown driver.
        """
        mode = self.pool_mode or "transaction"
        if not self.behind:
            mode = "session"  # nothing in between: nothing to change
        if self.version is not None:
            return advice(driver, pool_mode=mode, version=self.version,
                          max_prepared_statements=self.max_prepared_statements,
                          libpq_version=libpq_version)
        tracked = bool(self.tracks_prepared)
        return advice(driver, pool_mode=mode, version=_TRACKING if tracked else _NOT_TRACKING,
                      max_prepared_statements=1 if tracked else 0,
                      libpq_version=libpq_version)

    def describe(self) -> str:
        """One line: ``PgBouncer in transaction mode, prepared statements not tracked``."""
        if not self.behind:
            return "a direct connection to PostgreSQL"
        what = "PgBouncer" if self.kind == "pgbouncer" else "a connection pooler (PgBouncer?)"
        if self.version is not None:
            what += f" {self.version}"
        mode = (f"in {self.pool_mode} mode" if self.pool_mode
                else "in transaction mode (pool mode not determined)")
        tracked = {True: "it tracks prepared statements",
                   False: "it does not track prepared statements",
                   None: "prepared statement tracking unknown"}[self.tracks_prepared]
        return f"{what} {mode}, {tracked}"


#: A direct connection.
DIRECT = Pooler("direct", evidence="pg_backend_pid() is libpq's backend pid")


def coerce(value: Any) -> Pooler | None:
    """The ``pgbouncer=`` argument of the pools and of ``instrument()`` as a :class:`Pooler`,
    or ``None`` (detect on the first connection).

    Accepted: ``None`` (detect), ``False`` (direct: nothing changes), ``True`` (PgBouncer in
    transaction mode, version unknown: the rules for one that does not track prepared
    statements), a version string (``"1.22.1"``: PgBouncer of that version in transaction
    mode with its default ``max_prepared_statements``) or a :class:`Pooler`.

    Raises:
        ValueError: anything else (the message lists what is accepted).
    """
    if value is None or isinstance(value, Pooler):
        return value
    if value is False:
        return Pooler("direct", evidence="told: pgbouncer=False")
    if value is True:
        return Pooler("pgbouncer", "transaction", tracks_prepared=False,
                      evidence="told: pgbouncer=True")
    if isinstance(value, str):
        try:
            version = parse_version(value)
        except ValueError:
            version = None
        if version is not None:
            from .drivers import tracks_prepared_statements

            return Pooler("pgbouncer", "transaction", version, None,
                          tracks_prepared_statements(version, None),
                          evidence=f"told: pgbouncer={value!r}")
    raise ValueError(
        f"pgbouncer must be None (detect), True, False, a PgBouncer version such as "
        f"'1.22.1', or a pgwarden.pgbouncer.detect.Pooler; got {value!r}")


def from_pids(key_pid: int, server_pid: int | None) -> Pooler | None:
    """:data:`DIRECT` when the backend pid libpq got equals ``pg_backend_pid()`` on the
    server, else ``None`` (a pooler: go on with :func:`names_probe`)."""
    if server_pid is not None and server_pid == key_pid:
        return DIRECT
    return None


def names_probe(*, with_pid: bool = False) -> str:
    """The query of the prepared-statement probe: run as a *named* prepared statement, it
    returns the names the server knows it by, one row each (``with_pid``: one row,
    ``pg_backend_pid()`` and an array of the names). A nonce keeps other clients' probes
    apart; the text holds no user input."""
    nonce = secrets.token_hex(8)
    names = (f"select name from pg_catalog.pg_prepared_statements "
             f"where strpos(statement, 'pgwarden-probe-' || '{nonce}') > 0")
    if with_pid:
        names = f"select pg_backend_pid(), array({names})"
    return f"{names} /* pgwarden-probe-{nonce} */"


def from_names(names: Sequence[str] | None, driver: str, key_pid: int, server_pid: int | None,
               *, pool_mode: str | None = None) -> Pooler:
    """The pooler seen by the probe: ``names`` are the server-side names of the probe
    statement (``None``: the probe could not run). The driver's own prefix
    (:data:`DRIVER_PREFIXES`) means the pooler passed the name through: it does not track
    prepared statements; ``PGBOUNCER_`` means PgBouncer renamed it; any other name (or none:
    the pooler ran it unnamed) means the pooler manages them itself."""
    evidence = (f"the backend pid of the cancel key, {key_pid}, is not pg_backend_pid() "
                f"{server_pid} on the server")
    if names is None:
        return Pooler("pooler", pool_mode, tracks_prepared=None, evidence=evidence)
    prefix = DRIVER_PREFIXES.get(driver, "_pg3_")
    if any(n.startswith(prefix) for n in names):
        return Pooler("pooler", pool_mode, tracks_prepared=False,
                      evidence=evidence + "; a named prepared statement kept its name")
    if any(n.startswith("PGBOUNCER_") for n in names):
        return Pooler("pgbouncer", pool_mode, tracks_prepared=True,
                      evidence=evidence + "; PgBouncer renamed a prepared statement "
                      f"({names[0]}): it tracks them")
    return Pooler("pooler", pool_mode, tracks_prepared=True,
                  evidence=evidence + "; the pooler manages prepared statements itself")


# -- the probes (I/O), one per driver --------------------------------------------------------


#: The server session's pid, compared with the one libpq got (:func:`from_pids`).
SERVER_PID_QUERY = b"select pg_backend_pid()"


def detect_psycopg(conn: Any) -> Pooler:
    """Detect on a psycopg 3 ``Connection`` that nobody else uses (it is left idle, its
    ``prepare_threshold`` and ``prepared_max`` as they were). Its queries read tuples,
    whatever ``row_factory`` the application gave the connection.

    Raises:
        psycopg.Error: the connection failed (the caller decides what that means).
    """
    key = conn.info.backend_pid
    cur = conn.cursor(row_factory=tuple_row)
    with conn.transaction():
        row = cur.execute(SERVER_PID_QUERY, prepare=False).fetchone()
    server = row[0] if row else None
    direct = from_pids(key, server)
    if direct is not None:
        return direct
    if conn.prepare_threshold is None:
        return from_names(None, "psycopg", key, server)
    saved = conn.prepared_max
    try:
        # prepared_max=0: psycopg forgets the statement right after running it and deallocates
        # it before the next statement, in the same transaction, so on the same server
        # session (a protocol Close with libpq 17+, SQL DEALLOCATE before)
        conn.prepared_max = 0
        with conn.transaction():
            names = [r[0] for r in cur.execute(names_probe(), prepare=True).fetchall()]
            # (a savepoint: SQL DEALLOCATE of a statement PgBouncer renamed fails)
            with contextlib.suppress(psycopg.Error), conn.transaction():
                conn.execute(b"select 1", prepare=False)
    finally:
        conn.prepared_max = saved
    return from_names(names, "psycopg", key, server)


async def adetect_psycopg(conn: Any) -> Pooler:
    """:func:`detect_psycopg` for a psycopg 3 ``AsyncConnection``."""
    key = conn.info.backend_pid
    cur = conn.cursor(row_factory=tuple_row)
    async with conn.transaction():
        await cur.execute(SERVER_PID_QUERY, prepare=False)
        row = await cur.fetchone()
    server = row[0] if row else None
    direct = from_pids(key, server)
    if direct is not None:
        return direct
    if conn.prepare_threshold is None:
        return from_names(None, "psycopg", key, server)
    saved = conn.prepared_max
    try:
        conn.prepared_max = 0
        async with conn.transaction():
            await cur.execute(names_probe(), prepare=True)
            names = [r[0] for r in await cur.fetchall()]
            with contextlib.suppress(psycopg.Error):
                async with conn.transaction():
                    await conn.execute(b"select 1", prepare=False)
    finally:
        conn.prepared_max = saved
    return from_names(names, "psycopg", key, server)


async def adetect_asyncpg(con: Any) -> Pooler:
    """Detect on an ``asyncpg.Connection`` that nobody else uses (left idle). asyncpg names
    the statements it prepares (``Connection.prepare()``), so both questions are one named
    statement inside a transaction, deallocated again in it when it kept its name: nothing
    is left on a server session another client may get next.

    Raises:
        asyncpg.PostgresError, OSError: the connection failed.
    """
    key = con.get_server_pid()
    probe = names_probe(with_pid=True)
    tr = con.transaction()
    await tr.start()
    try:
        stmt = await con.prepare(probe)
        row = await stmt.fetchrow()
        server, names = (row[0], list(row[1] or ())) if row else (None, [])
        for n in names:
            if n.startswith(DRIVER_PREFIXES["asyncpg"]):
                await con.execute(f'deallocate "{n}"')
    finally:
        await tr.rollback()
    return from_pids(key, server) or from_names(names, "asyncpg", key, server)
