"""Records of one look at PgBouncer's admin console (``SHOW POOLS / STATS / CLIENTS / SERVERS /
DATABASES / CONFIG / VERSION``), bound by column name.

Column sets differ across PgBouncer versions (1.18 added the cancel-request columns of ``SHOW
POOLS`` and ``application_name`` of ``SHOW CLIENTS/SERVERS``; 1.21 ``prepared_statements``;
1.23 ``total_server_assignment_count``; 1.24 the prepared-statement counters of ``SHOW STATS``,
``id``, and renamed ``reserve_pool`` to ``reserve_pool_size``). Every field a version may lack
has a default (``0`` for counters PgBouncer did not have yet, ``None`` where "unknown" differs
from zero); columns a newer version adds are ignored. Units: seconds as floats (PgBouncer
reports microseconds in ``SHOW STATS`` and ``*_us`` columns), bytes as ints. Column meanings:
PgBouncer's usage docs, "SHOW commands".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...pgbouncer.version import Version

__all__ = [
    "ADMIN_DATABASE",
    "BouncerSnapshot",
    "Connection",
    "Database",
    "Pool",
    "Stats",
]

#: The admin console's virtual database; its pools and clients are pgwarden's own look.
ADMIN_DATABASE = "pgbouncer"


@dataclass(frozen=True, slots=True)
class Pool:
    """One ``SHOW POOLS`` row: a (database, user) pair.

    Attributes:
        cl_active: clients linked to a server or idle with no query waiting.
        cl_waiting: clients that sent a query and have no server yet.
        sv_active: servers linked to a client; ``sv_idle`` ready; ``sv_used`` idle past
            ``server_check_delay``; ``sv_tested`` running the reset/check query;
            ``sv_login`` logging in.
        maxwait: seconds the oldest waiting client has waited (``maxwait`` + ``maxwait_us``).
        pool_mode: ``session``, ``transaction`` or ``statement``.
    """

    database: str
    user: str
    cl_active: int = 0
    cl_waiting: int = 0
    cl_active_cancel_req: int = 0
    cl_waiting_cancel_req: int = 0
    sv_active: int = 0
    sv_active_cancel: int = 0
    sv_being_canceled: int = 0
    sv_idle: int = 0
    sv_used: int = 0
    sv_tested: int = 0
    sv_login: int = 0
    maxwait: float = 0.0
    pool_mode: str | None = None

    @property
    def servers(self) -> int:
        """Server connections of this pool, whatever their state."""
        return (self.sv_active + self.sv_active_cancel + self.sv_being_canceled + self.sv_idle
                + self.sv_used + self.sv_tested + self.sv_login)

    @property
    def clients(self) -> int:
        return (self.cl_active + self.cl_waiting + self.cl_active_cancel_req
                + self.cl_waiting_cancel_req)

    @property
    def key(self) -> str:
        """``database/user``, as PgBouncer's log names a pool."""
        return f"{self.database}/{self.user}"


@dataclass(frozen=True, slots=True)
class Stats:
    """One ``SHOW STATS`` row (per database). Totals since PgBouncer started; ``avg_*`` over the
    last ``stats_period``. Times are seconds (PgBouncer reports microseconds)."""

    database: str
    total_xact_count: int = 0
    total_query_count: int = 0
    total_received: int = 0
    total_sent: int = 0
    total_xact_time: float = 0.0
    total_query_time: float = 0.0
    total_wait_time: float = 0.0
    avg_xact_count: float = 0.0
    avg_query_count: float = 0.0
    avg_recv: float = 0.0
    avg_sent: float = 0.0
    avg_xact_time: float = 0.0
    avg_query_time: float = 0.0
    avg_wait_time: float = 0.0
    #: times a server was assigned to a client (1.23+), ``None`` before
    total_server_assignment_count: int | None = None
    #: prepared-statement counters (1.24+), ``None`` before
    total_client_parse_count: int | None = None
    total_server_parse_count: int | None = None
    total_bind_count: int | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    """One ``SHOW CLIENTS`` (``type`` C) or ``SHOW SERVERS`` (``type`` S) row.

    Attributes:
        state: clients ``active``, ``waiting``, ``active_cancel_req``, ``waiting_cancel_req``;
            servers ``active``, ``idle``, ``used``, ``tested``, ``new``, ``active_cancel``,
            ``being_canceled``.
        addr, port: the client's address (clients) or PostgreSQL's (servers).
        connect_time, request_time: when it connected and last sent a request (UTC).
        wait: seconds a client has waited for a server (``wait`` + ``wait_us``).
        ptr: PgBouncer's id of this connection; ``link`` is the ``ptr`` of the connection it is
            paired with (a server's client, a client's server), ``""`` when none.
        remote_pid: servers: the PostgreSQL backend pid (``pg_stat_activity.pid``).
        application_name: clients: theirs; servers: that of the linked client (1.18+).
        prepared_statements: prepared statements PgBouncer tracks on it (1.21+), else None.
    """

    type: str
    user: str
    database: str
    state: str
    addr: str | None = None
    port: int | None = None
    local_addr: str | None = None
    local_port: int | None = None
    connect_time: dt.datetime | None = None
    request_time: dt.datetime | None = None
    wait: float = 0.0
    close_needed: bool = False
    ptr: str = ""
    link: str = ""
    remote_pid: int = 0
    tls: str = ""
    application_name: str = ""
    prepared_statements: int | None = None


@dataclass(frozen=True, slots=True)
class Database:
    """One ``SHOW DATABASES`` row.

    Attributes:
        pool_size: the most server connections per pool of this database (``pool_size`` or
            ``default_pool_size``); ``reserve_pool`` more after ``reserve_pool_timeout``.
        max_connections: ``max_db_connections`` (0: unlimited); ``current_connections`` the
            server connections it has now.
    """

    name: str
    host: str | None = None
    port: int | None = None
    database: str | None = None
    force_user: str | None = None
    pool_size: int = 0
    min_pool_size: int = 0
    reserve_pool: int = 0
    pool_mode: str | None = None
    max_connections: int = 0
    current_connections: int = 0
    paused: bool = False
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class BouncerSnapshot:
    """One look at PgBouncer. The admin console's own virtual database (``pgbouncer``) is left
    out of ``pools``, ``stats``, ``clients``, ``servers`` and ``databases``.

    Attributes:
        version: the parsed version; ``version_text`` as PgBouncer printed it.
        config: ``SHOW CONFIG`` as key -> value text.
        taken_at: when it was taken (UTC, client clock: PgBouncer has no ``now()``).
        duration: seconds it took.
    """

    version: Version
    version_text: str
    pools: tuple[Pool, ...]
    stats: tuple[Stats, ...]
    clients: tuple[Connection, ...]
    servers: tuple[Connection, ...]
    databases: tuple[Database, ...]
    config: Mapping[str, str] = field(default_factory=dict)
    taken_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    duration: float = 0.0

    def setting(self, key: str) -> str | None:
        """A ``SHOW CONFIG`` value, ``None`` where this version has no such setting."""
        return self.config.get(key)

    def setting_int(self, key: str, default: int = 0) -> int:
        try:
            return int(float(self.config[key]))
        except (KeyError, ValueError):
            return default

    def setting_seconds(self, key: str, default: float = 0.0) -> float:
        """A duration setting in seconds (PgBouncer shows them as seconds)."""
        try:
            return float(self.config[key])
        except (KeyError, ValueError):
            return default

    @property
    def pool_mode(self) -> str:
        """The default ``pool_mode`` (a database or user may override it; each
        :class:`Pool` says its own)."""
        return self.config.get("pool_mode", "session")

    @property
    def server_connections(self) -> int:
        """Server connections to PostgreSQL, over all pools."""
        return len(self.servers)

    def database(self, name: str) -> Database | None:
        return next((d for d in self.databases if d.name == name), None)
