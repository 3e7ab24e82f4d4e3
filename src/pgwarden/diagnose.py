"""THE classifier: what a connection error means, how to fix it, and how to retry it.

One table, :data:`DIAGNOSES`, answers every "what does this failure mean" question in pgwarden:
``pgwarden explain``; ``check``, the doctor and every other command when they cannot connect or
lose the server (through :func:`classify`, in the CLI's one error boundary); and the pools, whose
retry cadence depends on the :attr:`Diagnosis.kind` (:func:`classify` again). Each entry names
the SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html) and the messages
the server and the client libraries print (libpq, psycopg, psycopg_pool, SQLAlchemy, asyncpg)
for every supported PostgreSQL version: psycopg gives no SQLSTATE for errors raised while
connecting, so the message is matched there (the server's wording changed in PostgreSQL 16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DIAGNOSES",
    "KINDS",
    "Diagnosis",
    "Failure",
    "by_id",
    "classify",
    "diagnose",
    "explain",
    "server_message",
]

#: What a failure means for whoever retries it and for the CLI's exit code:
#:
#: ``unreachable``   nothing answers (refused, unknown host, timeout): retry soon (exit 3)
#: ``going_down``    the server is starting, stopping or in recovery (57P03): retry soon (3)
#: ``server_full``   no connection slot (53300): retry about once a second (3)
#: ``rejected``      this client is refused (password, pg_hba.conf, missing role or database,
#:                   TLS mismatch): retrying soon will not help (3)
#: ``invalid``       the connection parameters themselves are invalid: a usage error (64)
#: ``session_ended`` the server ended an open session (restart, pg_terminate_backend) (3)
#: ``permission``    the role lacks a privilege (42501) (4)
#: ``query``         a statement failed (cancelled, timed out)
#: ``client``        the client's own usage: its pool ran dry, one connection shared by two tasks
KINDS = (
    "unreachable", "going_down", "server_full", "rejected", "invalid", "session_ended",
    "permission", "query", "client",
)


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
        kind: one of :data:`KINDS`: how to retry it, which exit code the CLI gives.
        source: where the behaviour is documented.
    """

    id: str
    title: str
    sqlstates: tuple[str, ...]
    patterns: tuple[str, ...]
    causes: tuple[str, ...]
    fixes: tuple[str, ...]
    kind: str
    source: str = ""

    def matches_message(self, text: str) -> bool:
        """Whether one of :attr:`patterns` occurs in ``text``."""
        return any(re.search(p, text, re.IGNORECASE) for p in self.patterns)


_ERRCODES = "https://www.postgresql.org/docs/current/errcodes-appendix.html"

DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis(
        id="too_many_clients",
        kind="server_full",
        title="the server is full: every connection slot is taken, the superuser reserve too",
        sqlstates=("53300",),
        patterns=(
            r"too many clients already",
            r"too_many_connections",
            r"TooManyConnectionsError",
        ),
        causes=(
            "the pools of all services together are larger than max_connections (each process "
            "of a gunicorn/Celery deployment has its own pool), and superusers or roles with "
            "pg_use_reserved_connections took the reserved slots as well",
            "leaked or idle sessions pile up: connections checked out and never returned, "
            "or sessions left idle in transaction",
            "a client opens a new connection per request instead of using a pool",
        ),
        fixes=(
            "no new session gets in, not even a superuser's: free one from a session that is "
            "already connected (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "state = 'idle' AND ...), or stop or restart one of the client applications",
            "on the server's host, end an idle backend process: `pg_ctl kill TERM PID` (or "
            "`kill PID`, never -9) for a pid `ps` shows as '... idle'",
            "then run `pgwarden doctor` as a superuser to see which applications hold the slots",
            "make the sum of every pool's max_size (processes x max_size, per service) fit the "
            "usable slots (`pgwarden budget`), or put PgBouncer in front of the server",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="reserved_slots_only",
        kind="server_full",
        title="the server is full for ordinary roles: only the reserved slots are left",
        sqlstates=("53300",),
        patterns=(
            # PostgreSQL <= 15: "... for non-replication superuser connections"; 16+: "... for
            # roles with the SUPERUSER attribute" / "... with privileges of the
            # "pg_use_reserved_connections" role"
            r"remaining connection slots are reserved",
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
            "(PostgreSQL 16+): the reserved slots let it in, and it names which applications "
            "hold the others",
            "free slots now: `pgwarden guard --once --enforce --idle-after 600` from such a role "
            "(or SELECT pg_terminate_backend(pid) for the idle sessions the doctor names)",
            "make the sum of every pool's max_size (processes x max_size, per service) fit the "
            "usable slots (`pgwarden budget`), or put PgBouncer in front of the server",
            "set idle_in_transaction_session_timeout (e.g. '60s') so abandoned transactions end",
        ),
        source="https://www.postgresql.org/docs/current/runtime-config-connection.html",
    ),
    # -- PgBouncer's own errors (src/client.c, janitor.c, objects.c of PgBouncer; it sends
    # them with SQLSTATE 08P01 whatever they mean, so they are known by their message) --
    Diagnosis(
        id="pgbouncer_max_client_conn",
        kind="server_full",
        title="PgBouncer is full: it refuses new clients past max_client_conn",
        sqlstates=(),
        patterns=(
            r"no more connections allowed \(max_client_conn\)",
            r"client connections exceeded \(max_(?:db|user)_client_connections\)",
        ),
        causes=(
            "more client connections than max_client_conn (PgBouncer's default: 100): every "
            "process of every service holds its own pool of client connections to PgBouncer",
            "clients that connect and never disconnect (leaks, no idle timeout in the pools)",
        ),
        fixes=(
            "raise max_client_conn in pgbouncer.ini to the sum of the services' pools (client "
            "connections are cheap for PgBouncer; check the open-files limit: PgBouncer needs "
            "about max_client_conn + server connections file descriptors), then RELOAD",
            "`pgwarden budget` sizes it from the services' pools (`pgwarden pgbouncer init`)",
            "see who holds them: `pgwarden status --pgbouncer postgresql://admin@HOST:6432/"
            "pgbouncer`",
        ),
        source="https://www.pgbouncer.org/config.html#max_client_conn",
    ),
    Diagnosis(
        id="pgbouncer_query_wait_timeout",
        kind="server_full",
        title="PgBouncer disconnected a client that waited for a server connection longer "
        "than query_wait_timeout",
        sqlstates=(),
        patterns=(r"\bquery_wait_timeout\b",),
        causes=(
            "the pool is exhausted: default_pool_size (or max_db_connections / "
            "max_user_connections) server connections are all busy with other clients' "
            "transactions, and queries wait in PgBouncer's queue (cl_waiting in SHOW POOLS)",
            "transactions held open across slow work, so servers are not released",
            "PostgreSQL cannot take more connections (max_connections reached) or is down",
        ),
        fixes=(
            "look at the pools: `pgwarden doctor --pgbouncer DSN` names the pool with waiting "
            "clients and its size",
            "keep transactions short (in transaction mode a server is held for a whole "
            "transaction); raise default_pool_size within the server's usable slots "
            "(`pgwarden budget`), or set reserve_pool_size for bursts",
        ),
        source="https://www.pgbouncer.org/config.html#query_wait_timeout",
    ),
    Diagnosis(
        id="pgbouncer_server_login_failing",
        kind="unreachable",
        title="PgBouncer cannot log in to PostgreSQL and fails clients fast "
        "(server_login_retry)",
        sqlstates=(),
        patterns=(
            r"server login has been failing",  # PgBouncer 1.17+
            r"pgbouncer cannot connect to server",  # up to 1.16
        ),
        causes=(
            "PostgreSQL is down, restarting or refusing PgBouncer's connections (too many "
            "clients already: PgBouncer's pools together exceed max_connections)",
            "the password PgBouncer uses for the server (auth_file, auth_query, or the "
            "database entry's password=) is wrong, or pg_hba.conf rejects PgBouncer's address",
        ),
        fixes=(
            "read PgBouncer's log: it names the server's error for each failed login",
            "keep PgBouncer's server connections within PostgreSQL's usable slots: "
            "max_db_connections (or the sum of default_pool_size over the pools) below "
            "max_connections - superuser_reserved_connections (`pgwarden budget`)",
            "plan restarts with PAUSE / RESUME on the admin console so clients wait instead "
            "of failing for server_login_retry (15 s)",
        ),
        source="https://www.pgbouncer.org/config.html#server_login_retry",
    ),
    Diagnosis(
        id="pgbouncer_prepared_statement",
        kind="client",
        title="a prepared statement was not found (or found twice) on the server session: "
        "the driver prepares statements and a transaction-mode pooler switched sessions",
        sqlstates=("26000", "42P05"),
        patterns=(
            r'prepared statement "[^"]*" does not exist',
            r'prepared statement "[^"]*" already exists',
            r"InvalidSQLStatementNameError",
            r"DuplicatePreparedStatementError",
        ),
        causes=(
            "PgBouncer in transaction (or statement) mode hands each transaction any server "
            "session; a named prepared statement lives in one session. Before PgBouncer 1.21 "
            "(or with max_prepared_statements = 0) it does not track them",
            "psycopg 3 prepares a query after prepare_threshold (5) executions; asyncpg caches "
            "prepared statements (statement_cache_size 100); SQLAlchemy's asyncpg dialect "
            "prepares every statement under a numbered name",
        ),
        fixes=(
            "psycopg 3: connect with prepare_threshold=None (psycopg's docs, 'Using prepared "
            "statements with PgBouncer'; from psycopg 3.2 with PgBouncer 1.22+, "
            "max_prepared_statements > 0 and libpq 17 prepared statements work)",
            "asyncpg: statement_cache_size=0 (asyncpg FAQ)",
            "SQLAlchemy + asyncpg: connect_args={'statement_cache_size': 0, "
            "'prepared_statement_cache_size': 0, 'prepared_statement_name_func': lambda: "
            "f'__asyncpg_{uuid4()}__'} (SQLAlchemy's asyncpg dialect docs)",
            "or run PgBouncer 1.21+ with max_prepared_statements = 200 (the 1.24 default); "
            "`pgwarden pgbouncer init` prints what each service needs",
        ),
        source="https://www.pgbouncer.org/config.html#max_prepared_statements",
    ),
    Diagnosis(
        id="pgbouncer_unsupported_startup_parameter",
        kind="rejected",
        title="PgBouncer refused a startup parameter it does not track",
        sqlstates=(),
        patterns=(r"unsupported startup parameter",),
        causes=(
            "the driver sends a parameter in the startup packet that PgBouncer does not know: "
            "options (e.g. -c search_path=...), extra_float_digits (JDBC, some ORMs), jit or "
            "search_path through asyncpg's server_settings",
        ),
        fixes=(
            "add it to ignore_startup_parameters in pgbouncer.ini (e.g. "
            "ignore_startup_parameters = extra_float_digits,options) and RELOAD, or stop "
            "sending it and set it per role instead (ALTER ROLE app SET search_path = ...)",
        ),
        source="https://www.pgbouncer.org/config.html#ignore_startup_parameters",
    ),
    Diagnosis(
        id="pgbouncer_no_such_database",
        kind="rejected",
        title="PgBouncer has no entry for that database",
        sqlstates=(),
        patterns=(r"no such database: ",),
        causes=("the database is not in pgbouncer.ini's [databases] (and there is no '*' "
                "fallback entry)",),
        fixes=("add it to [databases] (name = host=... port=... dbname=...) and RELOAD, or "
               "connect to a database PgBouncer knows",),
        source="https://www.pgbouncer.org/config.html#section-databases",
    ),
    Diagnosis(
        id="pgbouncer_timeout_disconnect",
        kind="session_ended",
        title="PgBouncer closed the connection after one of its timeouts",
        sqlstates=(),
        patterns=(
            r"\bquery_timeout\b",
            r"\bclient_idle_timeout\b",
            r"idle transaction timeout",
        ),
        causes=(
            "query_timeout: a query ran longer than PgBouncer allows",
            "client_idle_timeout: the client sat idle longer than PgBouncer allows",
            "idle_transaction_timeout: the client stayed idle inside a transaction",
        ),
        fixes=(
            "keep the pools' idle lifetime below client_idle_timeout and validate connections "
            "on checkout; keep transactions short; use statement_timeout on the server for "
            "slow queries (query_timeout is a last resort for network problems)",
        ),
        source="https://www.pgbouncer.org/config.html#dangerous-timeouts",
    ),
    Diagnosis(
        id="pgbouncer_console",
        kind="rejected",
        title="PgBouncer's admin console refused this",
        sqlstates=(),
        patterns=(
            r"invalid command '.*', use SHOW HELP",
            r"extended query protocol not supported by admin console",
            r"^(?:FATAL:\s*)?not allowed\.?$",
            r"admin access needed",
        ),
        causes=(
            "the admin console (database 'pgbouncer') speaks only PgBouncer's commands "
            "(SHOW ..., RELOAD, PAUSE, ...) over the simple query protocol",
            "the user is in neither admin_users nor stats_users ('not allowed'), or only in "
            "stats_users for a command that needs admin_users",
        ),
        fixes=(
            "connect to a real database through PgBouncer for SQL; use the console only for "
            "its commands (psql -c 'SHOW POOLS' or psycopg with prepare_threshold=None)",
            "add the user to stats_users (read-only SHOW commands, enough for pgwarden) or "
            "admin_users in pgbouncer.ini, and RELOAD",
        ),
        source="https://www.pgbouncer.org/usage.html#admin-console",
    ),
    Diagnosis(
        id="pool_exhausted",
        kind="client",
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
        kind="session_ended",
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
        kind="session_ended",
        title="the server crashed or was stopped in immediate mode",
        sqlstates=("57P02",),
        patterns=(r"terminating connection because of crash of another server process",),
        causes=("another backend crashed and the postmaster reset all sessions",),
        fixes=("look in the server log for the crash; reconnect (the pool does it for you)",),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="cannot_connect_now",
        kind="going_down",
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
        kind="session_ended",
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
        kind="session_ended",
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
        kind="session_ended",
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
        kind="session_ended",
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
        kind="session_ended",
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
        kind="client",
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
        kind="unreachable",
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
        kind="unreachable",
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
        kind="unreachable",
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
        kind="rejected",
        title="the server rejected the user name or password",
        sqlstates=("28P01",),
        patterns=(r"password authentication failed", r"InvalidPasswordError",
                  r"SASL authentication failed"),
        causes=("wrong password, or a password for another role", "the role does not exist"),
        fixes=(
            "check the user and password (PGPASSWORD, ~/.pgpass, the DSN); special characters "
            "in a URL password must be percent-encoded",
        ),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="no_password",
        kind="rejected",
        title="the server asks for a password and none was given",
        sqlstates=(),
        patterns=(r"no password supplied", r"fe_sendauth: no password"),
        causes=("the DSN, PGPASSWORD and ~/.pgpass give no password",),
        fixes=("add the password to the DSN, PGPASSWORD or ~/.pgpass",),
    ),
    Diagnosis(
        id="hba_rejected",
        kind="rejected",
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
        kind="rejected",
        title="the role does not exist",
        sqlstates=(),
        patterns=(r'role "[^"]*" does not exist', r"\bno such user\b"),
        causes=("a typo in the user name, or the role was never created on this server",),
        fixes=("check the user in the DSN; CREATE ROLE ... LOGIN on the server",),
    ),
    Diagnosis(
        id="database_missing",
        kind="rejected",
        title="the database does not exist",
        sqlstates=("3D000",),
        patterns=(r'database "[^"]*" does not exist', r"InvalidCatalogNameError"),
        causes=("a typo in the database name, or it was never created on this server",),
        fixes=("check the dbname in the DSN; list databases with psql -l",),
        source=_ERRCODES,
    ),
    Diagnosis(
        id="too_many_connections_for_role",
        kind="server_full",
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
        kind="query",
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
        kind="rejected",
        title="the server or the client requires TLS and the other side does not offer it",
        sqlstates=(),
        patterns=(r"server does not support SSL", r"SSL off", r"SSL is not enabled"),
        causes=("sslmode=require against a server without TLS, or hostssl without TLS",),
        fixes=("align sslmode with the server (sslmode=prefer tries TLS and falls back)",),
    ),
    Diagnosis(
        id="invalid_parameter",
        kind="invalid",
        title="a connection parameter is invalid (the DSN, DATABASE_URL or PG* variables)",
        sqlstates=(),
        patterns=(
            r'invalid "?[a-z_]+"? value:',
            r"invalid integer value .* for connection option",
            r"invalid port number",
            r"bad value for [a-z_]+",
            r"invalid connection option",
            r"invalid URI query parameter",
            r'missing "=" after',
            r"unterminated quoted string in connection info",
            r"invalid percent-encoded token",
        ),
        causes=("a typo in a parameter value, e.g. sslmode=requir or connect_timeout=5s",),
        fixes=(
            "fix the value; the allowed values of each parameter are in libpq's documentation",
        ),
        source="https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS",
    ),
    Diagnosis(
        id="permission_denied",
        kind="permission",
        title="the role lacks a privilege the statement needs",
        sqlstates=("42501",),
        patterns=(r"permission denied for", r"must be a member of the role whose"),
        causes=("the connected role is not a superuser and was not granted the privilege",),
        fixes=(
            "GRANT the predefined role the command needs (pg_monitor to see every session, "
            "pg_signal_backend to cancel or terminate them) to the connected role",
        ),
        source="https://www.postgresql.org/docs/current/predefined-roles.html",
    ),
)


def diagnose(text: str) -> Diagnosis | None:
    """The best diagnosis for ``text`` (an error message or a SQLSTATE), or ``None``."""
    found = explain(text)
    return found[0] if found else None


def explain(text: str) -> list[Diagnosis]:
    """Every diagnosis that matches ``text`` (an error message or a SQLSTATE), best first.

    A bare SQLSTATE (``53300``) matches by code. A message matches by pattern; diagnoses it
    matches only through a SQLSTATE it quotes come after those.
    """
    if not text or not text.strip():
        return []
    stripped = text.strip()
    if stripped.upper() in _ALL_SQLSTATES:
        return [d for d in DIAGNOSES if stripped.upper() in d.sqlstates]
    by_pattern = [d for d in DIAGNOSES if d.matches_message(text)]
    by_code = [d for d in DIAGNOSES
               if d not in by_pattern and any(code in stripped for code in d.sqlstates)]
    return by_pattern + by_code


def by_id(diagnosis_id: str | None) -> Diagnosis | None:
    """The diagnosis with this id (as carried by :class:`pgwarden.errors.ConnectError`)."""
    return next((d for d in DIAGNOSES if d.id == diagnosis_id), None)


_ALL_SQLSTATES = frozenset(code for d in DIAGNOSES for code in d.sqlstates)

_LIBPQ_PREFIX_RE = re.compile(
    r"^(?:connection (?:failed|is bad):\s*)?(?:connection to server (?:at|on) .*? failed:\s*)?",
    re.IGNORECASE,
)


def server_message(exc: BaseException) -> str:
    """The meaningful line of a psycopg / libpq error, e.g.
    ``FATAL: password authentication failed for user "app"`` (libpq's "connection to server
    at ... failed:" prefix dropped; whitespace folded). Never contains a password: libpq does not
    echo it, and only ``str(exc)`` is used (an exception's ``repr`` can hold the conninfo)."""
    lines = [_LIBPQ_PREFIX_RE.sub("", ln.strip()) for ln in str(exc).splitlines()]
    text = re.sub(r"\s+", " ", " ".join(ln for ln in lines if ln)).strip()
    return text or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Failure:
    """What an exception means (:func:`classify`).

    Attributes:
        kind: one of :data:`KINDS`.
        said: what the server or libpq said (:func:`server_message`; no password).
        diagnosis: the matching entry of :data:`DIAGNOSES`, or ``None``.
        sqlstate: the SQLSTATE the server sent, else the diagnosis's, else ``None``.
    """

    kind: str
    said: str
    diagnosis: Diagnosis | None
    sqlstate: str | None

    @property
    def title(self) -> str:
        """The diagnosis's title, or ``""``."""
        return self.diagnosis.title if self.diagnosis is not None else ""

    @property
    def fix(self) -> str:
        """The diagnosis's first fix, or ``""``."""
        return self.diagnosis.fixes[0] if self.diagnosis is not None else ""


def classify(exc: BaseException, *, connecting: bool = False) -> Failure:
    """What ``exc`` means: by the SQLSTATE the server sent where there is one, else by the
    message (psycopg gives no SQLSTATE for errors raised while connecting).

    Args:
        exc: any exception (usually a ``psycopg.Error``).
        connecting: ``exc`` came from a connection attempt. An unmatched failure, or a
            connection closed during the startup, then counts as ``unreachable``, except an
            exception neither psycopg's nor the network's (code run on the new connection,
            such as a pool's ``configure``, failed): ``client``; after
            connecting, an unmatched ``psycopg.OperationalError``
            counts as ``session_ended`` (the server or the network dropped the session) and any
            other unmatched exception as ``query``.
    """
    said = server_message(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    found: Diagnosis | None = None
    if isinstance(sqlstate, str) and sqlstate in _ALL_SQLSTATES:
        by_code = [d for d in DIAGNOSES if sqlstate in d.sqlstates]
        found = next((d for d in by_code if d.matches_message(said)), by_code[0])
    if found is None:
        found = next((d for d in DIAGNOSES if d.matches_message(said)), None)
    if found is not None:
        kind = found.kind
        if connecting and kind == "session_ended":
            kind = "unreachable"  # closed during the startup: nobody is there to talk to
    elif connecting:
        import psycopg

        kind = "unreachable" if isinstance(exc, (psycopg.Error, OSError)) else "client"
    else:
        import psycopg  # psycopg is a dependency; imported here to keep this module light

        kind = "session_ended" if isinstance(exc, psycopg.OperationalError) else "query"
    if not isinstance(sqlstate, str):
        sqlstate = found.sqlstates[0] if found is not None and found.sqlstates else None
    return Failure(kind=kind, said=said, diagnosis=found, sqlstate=sqlstate)
