"""Records of one look at the server: sessions, settings, the snapshot, and headroom arithmetic.

Terms (DESIGN.md glossary): a **session** is one ``pg_stat_activity`` row; **usable slots** are
``max_connections - superuser_reserved_connections - reserved_connections`` (the last exists on
PostgreSQL 16+, see https://www.postgresql.org/docs/current/runtime-config-connection.html);
**usage** is client backends over usable slots.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field

from psycopg import sql

__all__ = ["Server", "Session", "Settings", "Snapshot", "role_sql"]

_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def role_sql(role: str) -> str:
    """``role`` as it must be written in a GRANT a report suggests: bare when it is a plain
    lower-case identifier, else quoted by psycopg (``"Ops Team"``)."""
    return role if _PLAIN_IDENT.match(role) else sql.Identifier(role).as_string(None)


CLIENT_BACKEND = "client backend"
IDLE = "idle"
ACTIVE = "active"
IDLE_IN_TRANSACTION = "idle in transaction"
IDLE_IN_TRANSACTION_ABORTED = "idle in transaction (aborted)"


@dataclass(frozen=True, slots=True)
class Session:
    """One backend as ``pg_stat_activity`` shows it.

    Ages are seconds (float) at the snapshot's instant, ``None`` where the column is NULL (not
    applicable, or hidden from a role without ``pg_monitor``). ``visible`` is False when the
    connected role may not see this session's state and query (``<insufficient privilege>``).
    """

    pid: int
    database: str | None
    user: str | None
    application: str
    client_addr: str | None
    client_port: int | None
    backend_type: str | None
    state: str | None
    backend_start: dt.datetime | None
    xact_start: dt.datetime | None
    query_start: dt.datetime | None
    state_change: dt.datetime | None
    backend_age: float | None
    xact_age: float | None
    query_age: float | None
    state_age: float | None
    wait_event_type: str | None
    wait_event: str | None
    query: str | None
    blocking_pids: tuple[int, ...]
    is_superuser: bool
    is_replication_role: bool

    @property
    def visible(self) -> bool:
        return self.backend_type is not None

    @property
    def is_client_backend(self) -> bool:
        """A client connection. Hidden rows count when attached to a database (the best a role
        without ``pg_monitor`` can tell: background processes show no database)."""
        if self.backend_type is None:
            return self.database is not None
        return self.backend_type == CLIENT_BACKEND

    @property
    def in_transaction(self) -> bool:
        return self.state in (IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED)

    @property
    def label(self) -> str:
        """``application`` or ``(no application_name)``, for reports."""
        return self.application or "(no application_name)"


@dataclass(frozen=True, slots=True)
class Settings:
    """The server settings that decide connection capacity and idle handling.

    Durations are seconds (float); 0 means "off" as in PostgreSQL.
    """

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0
    idle_in_transaction_session_timeout: float = 0.0
    idle_session_timeout: float = 0.0
    statement_timeout: float = 0.0
    tcp_keepalives_idle: float = 0.0
    tcp_keepalives_interval: float = 0.0
    tcp_keepalives_count: int = 0
    client_connection_check_interval: float = 0.0

    @property
    def usable_slots(self) -> int:
        """Slots an ordinary role can take."""
        return max(
            0,
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections,
        )


@dataclass(frozen=True, slots=True)
class Server:
    """Facts about the server and the role pgwarden is connected as."""

    version_num: int
    version: str
    self_pid: int
    role: str
    is_superuser: bool
    has_pg_monitor: bool
    has_pg_signal_backend: bool
    has_pg_use_reserved_connections: bool
    in_recovery: bool

    @property
    def sees_all_sessions(self) -> bool:
        return self.is_superuser or self.has_pg_monitor


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One look at the server: every session but pgwarden's own, and the settings.

    Attributes:
        taken_at: the server's ``now()`` when the snapshot was taken.
        sessions_total: sessions ever established (``pg_stat_database.sessions``, PostgreSQL 14+),
            ``None`` on older servers; two snapshots give the rate of new sessions.
        duration: seconds the snapshot took (client side).
    """

    taken_at: dt.datetime
    server: Server
    settings: Settings
    sessions: tuple[Session, ...]
    sessions_total: int | None = None
    duration: float = 0.0
    _clients: tuple[Session, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: every rule, the guard's policy and the exporter ask for it
        object.__setattr__(self, "_clients",
                           tuple(s for s in self.sessions if s.is_client_backend))

    @property
    def client_backends(self) -> tuple[Session, ...]:
        """Client sessions (not walsenders, autovacuum, background workers), pgwarden's excluded."""
        return self._clients

    @property
    def used_slots(self) -> int:
        """Client backends other than pgwarden's own session (the observer is not counted: it
        may sit in a reserved slot, and it is gone when the command ends)."""
        return len(self.client_backends)

    @property
    def usable_slots(self) -> int:
        return self.settings.usable_slots

    @property
    def usage(self) -> float:
        """``used_slots / usable_slots`` (may exceed 1.0 when other sessions use the reserved
        slots too: superusers, members of ``pg_use_reserved_connections``)."""
        usable = self.usable_slots
        return self.used_slots / usable if usable else 1.0

    @property
    def hidden_sessions(self) -> int:
        """Client sessions whose state the connected role may not see."""
        return sum(1 for s in self.client_backends if not s.visible)

    def count_by(self, attr: str) -> Counter[str]:
        """Client backends counted by ``state``, ``application``, ``user``, ``database`` or
        ``client_addr`` (missing values count as ``"(unknown)"``; empty application as
        ``"(no application_name)"``)."""
        counts: Counter[str] = Counter()
        for s in self.client_backends:
            if attr == "application":
                key = s.label
            else:
                value = getattr(s, attr)
                key = str(value) if value is not None else "(unknown)"
            counts[key] += 1
        return counts

    def by_pid(self) -> dict[int, Session]:
        return {s.pid: s for s in self.sessions}
