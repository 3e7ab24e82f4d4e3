"""What a connection error means and how to fix it.

One table, used by ``pgwarden explain``, by ``pgwarden check`` and the doctor when they cannot
connect, and by the pool when it reports why the server is unreachable. Each entry names the
SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html) or the message a
client library prints (libpq, psycopg, psycopg_pool, SQLAlchemy, asyncpg), the likely causes
and the fixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DIAGNOSES", "Diagnosis", "by_id", "diagnose", "explain"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One known error.

    Attributes:
        id: stable identifier (``too_many_clients``, ...).
        title: one line: what happened.
        sqlstates: SQLSTATE codes that mean this error (may be empty for client-side errors).
        patterns: regular expressions (case-insensitive) matched against the message.
        causes: the usual causes, most likely first.
        fixes: what to do, most effective first.
        source: where the behaviour is documented.
    """

    id: str
    title: str
    sqlstates: tuple[str, ...]
    patterns: tuple[str, ...]
    causes: tuple[str, ...]
    fixes: tuple[str, ...]
    source: str = ""

    def matches(self, text: str) -> bool:
        stripped = text.strip()
        if stripped.upper() in self.sqlstates:
            return True
        if any(code in stripped for code in self.sqlstates if len(stripped) > 5):
            return True
        return any(re.search(p, text, re.IGNORECASE) for p in self.patterns)


_ERRCODES = "https://www.postgresql.org/docs/current/errcodes-appendix.html"

DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis(
        id="too_many_clients",
        title="the server is full: every connection slot is taken",
        sqlstates=("53300",),
        patterns=(
            r"too many clients already",
            r"remaining connection slots are reserved",
            r"too_many_connections",
            r"TooManyConnectionsError",
        ),
        causes=(
            "the pools of all services together are larger than max_connections minus the "
            "reserved slots (each process of a gunicorn/Celery deployment has its own pool)",
            "leaked or idle sessions pile up: connections checked out and never returned, "
            "or sessions left idle in transaction",
            "a client opens a new connection per request instead of using a pool",
        ),
        fixes=(
            "run `pgwarden doctor` as a superuser or a role with pg_use_reserved_connections "
            "(PostgreSQL 16+) to see which applications hold the slots",
            "free slots now: `pgwarden guard --once --enforce --idle-after 600` (or "
            "SELECT pg_terminate_backend(pid) for the idle sessions doctor names)",
            "make the sum of every pool's max_size (processes x max_size, per service) fit the "
            "usable slots, "
            "or put PgBouncer in front of the server",
            "set idle_in_transaction_session_timeout (e.g. '60s') so abandoned transactions end",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="pool_exhausted",
        title="the application's own pool ran dry: every connection is checked out",
        sqlstates=(),
        patterns=(
            r"couldn't get a connection after",
            r"QueuePool limit of size \d+ overflow \d+ reached",
            r"QueuePool limit",
            r"connection pool exhausted",
            r"PoolTimeout",
            r"pool .* is exhausted",
        ),
        causes=(
            "connections checked out and never returned: getconn() without putconn() on an "
            "error path, a session not closed, a context manager not used",
            "connections held across slow work (HTTP calls, sleeps) or long transactions",
            "the pool is smaller than the concurrency (threads, workers, tasks) that uses it",
        ),
        fixes=(
            "always check out with a context manager: `with pool.connection() as conn:`",
            "use pgwarden.ConnectionPool (a drop-in for psycopg_pool): its timeout "
            "error names the holders with their stack, and it warns about leaks",
            "keep transactions short; do slow work outside them",
            "size the pool to the concurrency that needs the database, within the server's "
            "budget (the sum of all pools must fit the usable slots)",
        ),
        source="psycopg_pool PoolTimeout; SQLAlchemy TimeoutError (QueuePool)",
    ),
    Diagnosis(
        id="admin_shutdown",
        title="the server terminated the session (administrator command, restart or guard)",
        sqlstates=("57P01",),
        patterns=(r"terminating connection due to administrator command", r"AdminShutdown"),
        causes=(
            "pg_terminate_backend() was called on this session (a watchdog, pgwarden guard, "
            "an operator)",
            "the server is shutting down or restarting (smart/fast shutdown, failover)",
        ),
        fixes=(
            "let the pool validate and replace connections (pgwarden.ConnectionPool does; "
            "psycopg_pool needs check=ConnectionPool.check_connection; SQLAlchemy "
            "pool_pre_ping=True)",
            "retry idempotent work once on OperationalError",
            "check `pgwarden guard` audit logs or the server log for who terminated it",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="crash_shutdown",
        title="the server crashed or was stopped in immediate mode",
        sqlstates=("57P02",),
        patterns=(r"terminating connection because of crash of another server process",),
        causes=("another backend crashed and the postmaster reset all sessions",),
        fixes=("look in the server log for the crash; reconnect (the pool does it for you)",),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="cannot_connect_now",
        title="the server is starting up, shutting down or in recovery",
        sqlstates=("57P03",),
        patterns=(
            r"the database system is starting up",
            r"the database system is shutting down",
            r"the database system is in recovery mode",
            r"the database system is not yet accepting connections",
            r"CannotConnectNowError",
        ),
        causes=("a restart or failover is in progress",),
        fixes=(
            "retry with backoff: the server accepts connections within seconds "
            "(pgwarden.ConnectionPool retries while callers wait)",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="idle_in_transaction_timeout",
        title="the session stayed idle inside a transaction past "
        "idle_in_transaction_session_timeout",
        sqlstates=("25P03",),
        patterns=(r"terminating connection due to idle-in-transaction timeout",),
        causes=(
            "code opened a transaction and then did something slow (or nothing) before "
            "committing: a request that awaits an HTTP call inside `with conn.transaction()`",
        ),
        fixes=(
            "commit or roll back before slow work; use `with pool.transaction() as conn:`",
            "if the pause is legitimate, raise the timeout for that role only: "
            "ALTER ROLE app SET idle_in_transaction_session_timeout = '5min'",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="idle_session_timeout",
        title="the server closed an idle session (idle_session_timeout)",
        sqlstates=("57P05",),
        patterns=(r"terminating connection due to idle-session timeout",),
        causes=("idle_session_timeout is shorter than the time the pool keeps connections idle",),
        fixes=(
            "set the pool's max_idle below idle_session_timeout, or validate on checkout",
            "do not set idle_session_timeout for roles that connect through a pooler",
        ),
        source="https://www.postgresql.org/docs/current/runtime-config-client.html",
    ),
    Diagnosis(
        id="connection_closed",
        title="the connection was already closed when the code used it",
        sqlstates=(),
        patterns=(
            r"connection already closed",
            r"the connection is closed",
            r"InterfaceError: connection already closed",
            r"connection is closed",
        ),
        causes=(
            "a connection object was used after close() or after the pool discarded it",
            "the server or a middlebox dropped the connection while it sat idle, and the "
            "pool handed it out without validation",
            "a connection shared between threads or processes (fork without re-creating "
            "the pool)",
        ),
        fixes=(
            "validate on checkout (pgwarden.ConnectionPool does it for connections idle longer "
            "than its validation window; SQLAlchemy pool_pre_ping=True)",
            "create the pool after fork (gunicorn post_fork, Celery worker_process_init) or "
            "use a fork-safe pool",
            "never keep a connection in a global: check it out per unit of work",
        ),
    ),
    Diagnosis(
        id="ssl_closed",
        title="the TLS connection was cut by the server or the network",
        sqlstates=(),
        patterns=(
            r"SSL connection has been closed unexpectedly",
            r"SSL SYSCALL error",
            r"SSL error: decryption failed or bad record mac",
        ),
        causes=(
            "a NAT gateway, load balancer or firewall dropped the idle connection "
            "(AWS NAT: 350 s; Azure LB: 4 min)",
            "the server restarted or terminated the session",
            "one TLS connection used from two threads or after fork",
        ),
        fixes=(
            "set TCP keepalives below the middlebox's idle timeout: keepalives_idle=30 "
            "keepalives_interval=10 keepalives_count=3 (pgwarden.ConnectionPool's default)",
            "validate idle connections on checkout; cap max_idle below the middlebox timeout",
        ),
    ),
    Diagnosis(
        id="server_closed",
        title="the server closed the connection unexpectedly",
        sqlstates=("08006", "08003"),
        patterns=(
            r"server closed the connection unexpectedly",
            r"terminating connection",
            r"connection was closed in the middle of operation",
            r"ConnectionDoesNotExistError",
            r"consuming input failed",
            r"could not receive data from server",
            r"EOF detected",
        ),
        causes=(
            "the backend was terminated (pg_terminate_backend, idle timeouts, OOM killer)",
            "the server restarted or failed over",
            "the network dropped the connection (NAT or load balancer idle timeout)",
        ),
        fixes=(
            "use a pool that validates and replaces broken connections and retry idempotent "
            "work once",
            "set TCP keepalives (keepalives_idle=30) so dead connections are noticed early",
            "check the server log around that time for terminations and crashes",
        ),
    ),
    Diagnosis(
        id="another_operation",
        title="two operations ran on one connection at the same time",
        sqlstates=(),
        patterns=(
            r"another operation is in progress",
            r"another command is already in progress",
            r"InterfaceError: cannot perform operation: another operation",
        ),
        causes=(
            "one asyncpg/psycopg async connection shared by concurrent tasks",
            "a task was cancelled mid-query and its connection was reused before it was reset",
        ),
        fixes=(
            "give each task its own connection from a pool (`async with pool.connection()`)",
            "do not share a connection across tasks; use asyncio.Lock if you must",
        ),
    ),
    Diagnosis(
        id="connection_refused",
        title="nothing accepts connections at that host and port",
        sqlstates=(),
        patterns=(r"Connection refused", r"could not connect to server", r"ConnectionRefusedError"),
        causes=(
            "the server is down or restarting",
            "wrong host or port",
            "the server listens only on other addresses (listen_addresses)",
        ),
        fixes=(
            "check the server is running (pg_isready -h HOST -p PORT)",
            "check host, port and listen_addresses; in containers use the service name, "
            "not localhost",
        ),
    ),
    Diagnosis(
        id="host_unknown",
        title="the host name does not resolve",
        sqlstates=(),
        patterns=(
            r"could not translate host name",
            r"Name or service not known",
            r"nodename nor servname",
            r"Temporary failure in name resolution",
        ),
        causes=("a typo in the host, or DNS not reachable from here",),
        fixes=("check the host in the DSN; try `getent hosts HOST`",),
    ),
    Diagnosis(
        id="timeout",
        title="the connection attempt timed out",
        sqlstates=(),
        patterns=(r"timeout expired", r"timed out", r"Connection timed out"),
        causes=(
            "a firewall drops packets to the port (no answer at all)",
            "the server is overloaded",
        ),
        fixes=(
            "check security groups / firewall rules between here and the server",
            "check the server's load; raise connect_timeout only if the network is slow",
        ),
    ),
    Diagnosis(
        id="auth_failed",
        title="the server rejected the user name or password",
        sqlstates=("28P01",),
        patterns=(r"password authentication failed", r"InvalidPasswordError"),
        causes=("wrong password, or a password for another role", "the role does not exist"),
        fixes=(
            "check the user and password (PGPASSWORD, ~/.pgpass, the DSN); special characters "
            "in a URL password must be percent-encoded",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="no_password",
        title="the server asks for a password and none was given",
        sqlstates=(),
        patterns=(r"no password supplied", r"fe_sendauth: no password"),
        causes=("the DSN, PGPASSWORD and ~/.pgpass give no password",),
        fixes=("add the password to the DSN, PGPASSWORD or ~/.pgpass",),
    ),
    Diagnosis(
        id="hba_rejected",
        title="pg_hba.conf has no entry that lets this client in",
        sqlstates=("28000",),
        patterns=(r"no pg_hba\.conf entry", r"pg_hba\.conf rejects connection"),
        causes=("the server does not allow this user/database from this address (or without TLS)",),
        fixes=(
            "add a pg_hba.conf line for this address, user and database, then "
            "SELECT pg_reload_conf()",
            "if the line requires TLS (hostssl), connect with sslmode=require",
        ),
        source="https://www.postgresql.org/docs/current/auth-pg-hba-conf.html",
    ),
    Diagnosis(
        id="role_missing",
        title="the role does not exist",
        sqlstates=(),
        patterns=(r'role "[^"]*" does not exist',),
        causes=("a typo in the user name, or the role was never created on this server",),
        fixes=("check the user in the DSN; CREATE ROLE ... LOGIN on the server",),
    ),
    Diagnosis(
        id="database_missing",
        title="the database does not exist",
        sqlstates=("3D000",),
        patterns=(r'database "[^"]*" does not exist', r"InvalidCatalogNameError"),
        causes=("a typo in the database name, or it was never created on this server",),
        fixes=("check the dbname in the DSN; list databases with psql -l",),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="too_many_connections_for_role",
        title="the role or database reached its own connection limit",
        sqlstates=(),
        patterns=(r"too many connections for role", r"too many connections for database"),
        causes=("ALTER ROLE/DATABASE ... CONNECTION LIMIT is reached",),
        fixes=(
            "find the role's sessions with `pgwarden status`; raise the limit or shrink the pools",
        ),
    ),
    Diagnosis(
        id="query_canceled",
        title="the query was cancelled (statement_timeout or a cancel request)",
        sqlstates=("57014",),
        patterns=(
            r"canceling statement due to statement timeout",
            r"canceling statement due to user request",
            r"QueryCanceled",
        ),
        causes=(
            "statement_timeout is shorter than the query",
            "pg_cancel_backend() (e.g. pgwarden guard's long-query rule)",
        ),
        fixes=("make the query faster, or raise statement_timeout for that role or transaction",),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="ssl_required",
        title="the server or the client requires TLS and the other side does not offer it",
        sqlstates=(),
        patterns=(r"server does not support SSL", r"SSL off", r"SSL is not enabled"),
        causes=("sslmode=require against a server without TLS, or hostssl without TLS",),
        fixes=("align sslmode with the server (sslmode=prefer tries TLS and falls back)",),
    ),
)


def diagnose(text: str) -> Diagnosis | None:
    """The first diagnosis whose SQLSTATE or message pattern matches ``text``, or ``None``."""
    found = explain(text)
    return found[0] if found else None


def explain(text: str) -> list[Diagnosis]:
    """Every diagnosis that matches ``text`` (an error message or a SQLSTATE), best first.

    A bare SQLSTATE (``53300``) matches only by code; a message matches by pattern and by any
    SQLSTATE it quotes.
    """
    if not text or not text.strip():
        return []
    return [d for d in DIAGNOSES if d.matches(text)]


def by_id(diagnosis_id: str | None) -> Diagnosis | None:
    """The diagnosis with this id (as carried by :class:`pgwarden.errors.ConnectError`)."""
    return next((d for d in DIAGNOSES if d.id == diagnosis_id), None)
