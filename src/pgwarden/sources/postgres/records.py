"""Records of one look at the server: sessions, settings, the snapshot, and headroom arithmetic.

Terms (DESIGN.md glossary): a **session** is one ``pg_stat_activity`` row; **usable slots** are
``max_connections - superuser_reserved_connections - reserved_connections`` (the last exists on
PostgreSQL 16+, see https://www.postgresql.org/docs/current/runtime-config-connection.html);
**usage** is client backends over usable slots.

A snapshot is **complete** (every backend a :class:`Session`, from ``take``) or a **summary**
(from ``take_summary``): every backend counted by :class:`SessionGroup` on the server, a
:class:`Session` only for the **notable** ones and a :class:`ClientBrief` for a few more
(:class:`Notable`: those a doctor rule can name; :class:`ActivitySummary`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from psycopg import sql

__all__ = [
    "ActivitySummary",
    "ApplicationCounts",
    "ClientBrief",
    "Notable",
    "Server",
    "Session",
    "SessionFacts",
    "SessionGroup",
    "Settings",
    "Snapshot",
    "group_sessions",
    "hidden_hint",
    "role_sql",
]

_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def hidden_hint(hidden: int, server: Server) -> str:
    """What to do about ``hidden`` client sessions whose details ``server.role`` may not see
    (``N sessions of other roles are hidden from ROLE: GRANT pg_monitor TO ROLE;``), or ``""``
    when there are none or the role sees every session. One text for every command that says
    it (top, budget)."""
    if not hidden or server.sees_all_sessions:
        return ""
    return (f"{hidden} sessions of other roles are hidden from {server.role}: "
            f"GRANT pg_monitor TO {role_sql(server.role)};")


def role_sql(role: str) -> str:
    """``role`` as it must be written in a GRANT a report suggests: bare when it is a plain
    lower-case identifier, else quoted by psycopg (``"Ops Team"``)."""
    return role if _PLAIN_IDENT.match(role) else sql.Identifier(role).as_string(None)


CLIENT_BACKEND = "client backend"
IDLE = "idle"
ACTIVE = "active"
IDLE_IN_TRANSACTION = "idle in transaction"
IDLE_IN_TRANSACTION_ABORTED = "idle in transaction (aborted)"


NO_APPLICATION = "(no application_name)"


class _Named:
    """The ``label`` of a record with an ``application`` field, defined once."""

    __slots__ = ()
    application: str

    @property
    def label(self) -> str:
        """``application`` or ``(no application_name)``, for reports."""
        return self.application or NO_APPLICATION


class _Backend(_Named):
    """What a :class:`Session` and a :class:`SessionGroup` both say about their backends, defined
    once (their ``backend_type``, ``database``, ``state`` and ``application`` fields)."""

    __slots__ = ()
    backend_type: str | None
    database: str | None
    state: str | None

    @property
    def visible(self) -> bool:
        """False when the connected role may not see the state and query
        (``<insufficient privilege>``: ``backend_type`` is NULL then)."""
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


@dataclass(frozen=True, slots=True)
class Session(_Backend):
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


@dataclass(frozen=True, slots=True)
class SessionGroup(_Backend):
    """The backends that share database, user, application, backend type and state: how many,
    and the oldest ages among them.

    Ages are seconds (float) at the snapshot's instant, the largest of the members'
    :class:`Session` ages (``oldest_state_age`` from ``state_age``, and so on), ``None`` where no
    member has one. A hidden group (``visible`` False) has no backend type, state or ages.
    """

    database: str | None
    user: str | None
    application: str
    backend_type: str | None
    state: str | None
    sessions: int
    oldest_state_age: float | None
    oldest_query_age: float | None
    oldest_xact_age: float | None


def _max_age(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def group_sessions(sessions: Iterable[Session]) -> tuple[SessionGroup, ...]:
    """``sessions`` counted by :class:`SessionGroup` (in order of each group's first session):
    what ``get_activity_summary.sql`` computes on the server, here for a complete snapshot."""
    acc: dict[tuple[str | None, str | None, str, str | None, str | None], list[Any]] = {}
    for s in sessions:
        key = (s.database, s.user, s.application, s.backend_type, s.state)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, s.state_age, s.query_age, s.xact_age]
        else:
            a[0] += 1
            a[1] = _max_age(a[1], s.state_age)
            a[2] = _max_age(a[2], s.query_age)
            a[3] = _max_age(a[3], s.xact_age)
    return tuple(SessionGroup(*key, *a) for key, a in acc.items())


@dataclass(frozen=True, slots=True)
class ClientBrief(_Named):
    """A client session in brief: what the rules that count sessions (idle_hoarding,
    connection_churn, unnamed_clients) read of it, the same fields as its :class:`Session`'s.
    Ages are seconds (float) at the snapshot's instant, ``None`` where unknown (hidden)."""

    pid: int
    application: str
    user: str | None
    client_addr: str | None
    state: str | None
    backend_age: float | None
    state_age: float | None


class SessionFacts(Protocol):
    """What a :class:`Session` and a :class:`ClientBrief` both have."""

    @property
    def pid(self) -> int: ...
    @property
    def application(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def client_addr(self) -> str | None: ...
    @property
    def state(self) -> str | None: ...
    @property
    def backend_age(self) -> float | None: ...
    @property
    def state_age(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Notable:
    """Which sessions a summary snapshot (``take_summary``) holds as :class:`Session` records
    and which as :class:`ClientBrief` records; every other backend is only counted
    (:class:`SessionGroup`). Seconds are floats.

    A session is notable (a :class:`Session`) when it is idle in a transaction (aborted or not)
    for at least ``idle_in_transaction_after``, active with a query running for at least
    ``long_query_after``, waiting on a lock, or blocking a session that waits on one. A client
    session idle for at least ``idle_after``, younger than ``young_age`` (connections opened per
    request) or without ``application_name`` is kept in brief (a :class:`ClientBrief`).

    The doctor derives one from its thresholds (``Thresholds.notable()``), so that its rules find
    on a summary snapshot exactly what they find on a complete one. The server picks the
    sessions within a millisecond of each threshold (a superset); the rules decide on the exact
    ages.

    Raises:
        ValueError: a duration not above 0.
    """

    idle_in_transaction_after: float
    idle_after: float
    long_query_after: float
    young_age: float

    def __post_init__(self) -> None:
        for name in ("idle_in_transaction_after", "idle_after", "long_query_after", "young_age"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds (got {getattr(self, name)})")

    def covers(self, other: Notable) -> bool:
        """Whether every session ``other`` keeps (as a record or in brief) this one keeps
        too."""
        return (self.idle_in_transaction_after <= other.idle_in_transaction_after
                and self.idle_after <= other.idle_after
                and self.long_query_after <= other.long_query_after
                and self.young_age >= other.young_age)


@dataclass(frozen=True, slots=True)
class ActivitySummary:
    """What a summary snapshot knows beyond its notable sessions: every backend but
    pgwarden's own counted (``groups``), the client sessions in brief (``briefs``, in pid
    order: those :class:`Notable` keeps in brief, and a few within a millisecond of its
    thresholds), and which sessions it keeps (``notable``)."""

    groups: tuple[SessionGroup, ...]
    briefs: tuple[ClientBrief, ...]
    notable: Notable


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
class ApplicationCounts:
    """Client sessions per ``application_name`` at one look (``""``: none), those of other
    roles whose details the connected role may not see included (``application_name`` is
    visible to every role; ``hidden`` counts them)."""

    sessions: Mapping[str, int]
    hidden: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One look at the server: every session but pgwarden's own, and the settings.

    Attributes:
        taken_at: the server's ``now()`` when the snapshot was taken.
        sessions: a complete snapshot's backends, every one but pgwarden's own; a summary's
            notable ones only (:class:`Notable`, the sessions blocking them included). In the
            order of their pids.
        sessions_total: sessions ever established (``pg_stat_database.sessions``, PostgreSQL 14+),
            ``None`` on older servers; two snapshots give the rate of new sessions.
        duration: seconds the snapshot took (client side).
        summary: a summary snapshot's counts (:class:`ActivitySummary`), ``None`` for a
            complete one.

    Counts (:attr:`used_slots`, :attr:`hidden_sessions`, :meth:`count_by`) cover every backend
    in both kinds; :attr:`client_backends` and :meth:`by_pid` hold the sessions there are,
    :meth:`client_briefs` the sessions in brief.
    """

    taken_at: dt.datetime
    server: Server
    settings: Settings
    sessions: tuple[Session, ...]
    sessions_total: int | None = None
    duration: float = 0.0
    summary: ActivitySummary | None = None
    _clients: tuple[Session, ...] = field(init=False, repr=False, compare=False)
    _grouped: tuple[SessionGroup, ...] | None = field(init=False, repr=False, compare=False)
    _used: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: every rule, the guard's policy and the exporter ask for them
        clients = tuple(s for s in self.sessions if s.is_client_backend)
        object.__setattr__(self, "_clients", clients)
        summary = self.summary
        object.__setattr__(self, "_grouped", None if summary is None else summary.groups)
        used = len(clients) if summary is None else sum(
            g.sessions for g in summary.groups if g.is_client_backend)
        object.__setattr__(self, "_used", used)

    @property
    def complete(self) -> bool:
        """True when :attr:`sessions` holds every backend (not a summary)."""
        return self.summary is None

    @property
    def notable(self) -> Notable | None:
        """Which sessions a summary holds (``None``: every one)."""
        return None if self.summary is None else self.summary.notable

    @property
    def client_backends(self) -> tuple[Session, ...]:
        """Client sessions (not walsenders, autovacuum, background workers), pgwarden's excluded;
        a summary's notable ones only."""
        return self._clients

    def session_groups(self) -> tuple[SessionGroup, ...]:
        """Every backend but pgwarden's own, counted by :class:`SessionGroup` (a complete
        snapshot's are counted at the first call)."""
        grouped = self._grouped
        if grouped is None:
            grouped = group_sessions(self.sessions)
            object.__setattr__(self, "_grouped", grouped)
        return grouped

    def client_briefs(self) -> Sequence[SessionFacts]:
        """Client sessions as the rules that count sessions read them: a complete snapshot's
        :attr:`client_backends`; a summary's :class:`ClientBrief` records, every client session
        idle past ``notable.idle_after``, younger than ``notable.young_age`` or without
        ``application_name`` among them (in pid order)."""
        if self.summary is None:
            return self._clients
        return self.summary.briefs

    def _counted(self) -> Iterator[tuple[Session | SessionGroup, int]]:
        """Every client backend once: each session, or each group with its size."""
        if self.summary is None:
            for s in self._clients:
                yield s, 1
        else:
            for g in self.summary.groups:
                if g.is_client_backend:
                    yield g, g.sessions

    @property
    def used_slots(self) -> int:
        """Client backends other than pgwarden's own session (the observer is not counted: it
        may sit in a reserved slot, and it is gone when the command ends)."""
        return self._used

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
        return sum(n for x, n in self._counted() if not x.visible)

    def count_by(self, attr: str) -> Counter[str]:
        """Client backends counted by ``state``, ``application``, ``user``, ``database`` or (a
        complete snapshot only) ``client_addr``; missing values count as ``"(unknown)"``, an
        empty application as ``"(no application_name)"``. Most first, ties by name.

        Raises:
            ValueError: ``client_addr`` of a summary (its groups have no client address).
        """
        if attr == "client_addr" and self.summary is not None:
            raise ValueError("a summary snapshot does not count sessions by client_addr")
        counts: Counter[str] = Counter()
        for x, n in self._counted():
            if attr == "application":
                key = x.label
            else:
                value = getattr(x, attr)
                key = str(value) if value is not None else "(unknown)"
            counts[key] += n
        return Counter(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))

    def by_pid(self) -> dict[int, Session]:
        return {s.pid: s for s in self.sessions}
