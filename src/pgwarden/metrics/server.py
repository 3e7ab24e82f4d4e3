"""The server's metrics: one snapshot per scrape per target, turned into Prometheus samples.

- :func:`server_samples` is pure: one :class:`~pgwarden.sources.postgres.Snapshot` (complete or
  a summary: the same samples) and the doctor's findings on it ->
  :class:`~pgwarden.metrics.registry.Sample` records (documented in :data:`SERVER_METRICS` and
  docs/exporter.md). Counts and ages come from the snapshot's session groups, lock waits from
  its sessions.
- :class:`TargetScraper` does the I/O for one server: one long-lived connection
  (``application_name=pgwarden-exporter``), reconnected after a loss; one summary snapshot
  (:func:`pgwarden.sources.postgres.take_summary`, the sessions the doctor's rules can name) at
  most every ``min_interval`` seconds however many scrapers ask (the last samples are served
  again in between); a server that is down, full or refuses the role gives ``pgwarden_up 0`` and
  one log line (what it means comes from :func:`pgwarden.diagnose.classify`), never an
  exception.
- :class:`ServerCollector` is the ``prometheus_client`` collector over one or more scrapers; a
  ``target`` label (``user@host:port/db``, never a password) is added when there are several.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client.core import Metric

from ..conninfo import Target, connect
from ..diagnose import by_id, classify
from ..doctor.rules import Finding, Thresholds, evaluate
from ..errors import ConfigError, ConnectError
from ..sources import postgres
from ..sources.postgres.records import IDLE, Session, SessionGroup, Snapshot
from .registry import LabelCap, MetricSpec, Sample, families, info_sample

__all__ = [
    "DEFAULT_MAX_APPLICATIONS",
    "DEFAULT_MAX_DATABASES",
    "DEFAULT_MAX_USERS",
    "DEFAULT_MIN_INTERVAL",
    "SERVER_METRICS",
    "Caps",
    "ServerCollector",
    "TargetScraper",
    "server_samples",
]

logger = logging.getLogger("pgwarden.metrics")

#: Seconds a snapshot is reused for (several scrapers, one snapshot). Prometheus scrapes every
#: 15 s by default; 1 s keeps a dashboard's manual refreshes cheap without hiding changes.
DEFAULT_MIN_INTERVAL = 1.0
#: Applications (users, databases) that keep their own label value; the rest are ``(other)``.
#: 20 keeps a server's series in the low hundreds (see docs/exporter.md, "Cardinality").
DEFAULT_MAX_APPLICATIONS = 20
DEFAULT_MAX_USERS = 20
DEFAULT_MAX_DATABASES = 20

HIDDEN = "(hidden)"
UNKNOWN = "(unknown)"

UP = MetricSpec("pgwarden_up", "gauge", (),
                "1 if the last snapshot of the server succeeded, 0 if the server is down, full "
                "or refused the exporter's role")
SCRAPE_DURATION = MetricSpec("pgwarden_scrape_duration_seconds", "gauge", (),
                             "Seconds the last snapshot and the doctor's rules took")
SNAPSHOTS = MetricSpec("pgwarden_snapshots", "counter", (),
                       "Snapshots taken (scrapes within --min-interval reuse the last one)")
SCRAPE_ERRORS = MetricSpec("pgwarden_scrape_errors", "counter", (),
                           "Snapshots that failed (server down, full, refused, connection lost)")
SNAPSHOT_TIME = MetricSpec("pgwarden_snapshot_timestamp_seconds", "gauge", (),
                           "The server's clock when the last snapshot was taken (Unix seconds)")
SERVER = MetricSpec("pgwarden_server", "info", (),
                    "The server: version, the exporter's role, whether it sees every session "
                    "and whether the server is a standby")
SLOTS_MAX = MetricSpec("pgwarden_slots_max", "gauge", (), "max_connections")
SLOTS_RESERVED = MetricSpec("pgwarden_slots_reserved", "gauge", ("kind",),
                            "Slots ordinary roles cannot take: kind=superuser "
                            "(superuser_reserved_connections), kind=reserved "
                            "(reserved_connections, PostgreSQL 16+)")
SLOTS_USABLE = MetricSpec("pgwarden_slots_usable", "gauge", (),
                          "Usable slots: max_connections - superuser_reserved_connections - "
                          "reserved_connections")
SLOTS_USED = MetricSpec("pgwarden_slots_used", "gauge", (),
                        "Client backends (the exporter's own session left out)")
USAGE = MetricSpec("pgwarden_slots_usage_ratio", "gauge", (),
                   "Used over usable slots (may exceed 1 when the reserved slots are in use)")
SESSIONS = MetricSpec("pgwarden_sessions", "gauge", ("application", "user", "database", "state"),
                      "Client backends by application, user, database and state "
                      "(state (hidden) for sessions the role may not see)")
SESSIONS_HIDDEN = MetricSpec("pgwarden_sessions_hidden", "gauge", (),
                             "Client backends whose state the exporter's role may not see "
                             "(GRANT pg_monitor to see them)")
BACKENDS = MetricSpec("pgwarden_backends", "gauge", ("backend_type",),
                      "Backends that are not client sessions (autovacuum, walsender, ...)")
OLDEST_IDLE = MetricSpec("pgwarden_oldest_idle_seconds", "gauge", ("application",),
                         "Seconds the longest idle session of each application has been idle")
OLDEST_IDLE_IN_TRANSACTION = MetricSpec(
    "pgwarden_oldest_idle_in_transaction_seconds", "gauge", ("application",),
    "Seconds the longest idle-in-transaction session of each application has been idle in "
    "its transaction")
OLDEST_TRANSACTION = MetricSpec("pgwarden_oldest_transaction_seconds", "gauge", ("application",),
                                "Seconds the oldest open transaction of each application has run")
OLDEST_QUERY = MetricSpec("pgwarden_oldest_query_seconds", "gauge", ("application",),
                          "Seconds the longest running active query of each application has run")
LOCK_WAITING = MetricSpec("pgwarden_lock_waiting_sessions", "gauge",
                          ("application", "blocker_application"),
                          "Sessions waiting on a lock, by their application and the application "
                          "of the (first) session blocking them")
LOCK_BLOCKING = MetricSpec("pgwarden_lock_blocking_sessions", "gauge", ("application", "state"),
                           "Sessions that block at least one other session, by application and "
                           "state (idle in transaction: code that does not finish its transaction)")
SESSIONS_ESTABLISHED = MetricSpec("pgwarden_sessions_established", "counter", (),
                                  "Sessions established since the statistics were reset "
                                  "(pg_stat_database.sessions, PostgreSQL 14+); rate() gives new "
                                  "sessions per second")
FINDINGS = MetricSpec("pgwarden_doctor_findings", "gauge", ("id", "severity"),
                      "The doctor's findings on the snapshot, by id and severity")

#: Every metric the exporter serves, in the order of docs/exporter.md.
SERVER_METRICS: tuple[MetricSpec, ...] = (
    UP, SCRAPE_DURATION, SNAPSHOTS, SCRAPE_ERRORS, SNAPSHOT_TIME, SERVER, SLOTS_MAX,
    SLOTS_RESERVED, SLOTS_USABLE, SLOTS_USED, USAGE, SESSIONS, SESSIONS_HIDDEN, BACKENDS,
    OLDEST_IDLE, OLDEST_IDLE_IN_TRANSACTION, OLDEST_TRANSACTION, OLDEST_QUERY, LOCK_WAITING,
    LOCK_BLOCKING, SESSIONS_ESTABLISHED, FINDINGS,
)


class Caps:
    """How many values of each client-chosen label keep their own name (validated eagerly).

    Raises:
        ConfigError: a cap below 1.
    """

    __slots__ = ("applications", "databases", "users")

    def __init__(self, *, applications: int = DEFAULT_MAX_APPLICATIONS,
                 users: int = DEFAULT_MAX_USERS, databases: int = DEFAULT_MAX_DATABASES) -> None:
        for name, value in (("applications", applications), ("users", users),
                            ("databases", databases)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"max {name} must be a whole number >= 1 (got {value!r})")
        self.applications, self.users, self.databases = applications, users, databases


def _state(s: Session | SessionGroup) -> str:
    if not s.visible:
        return HIDDEN
    return s.state or UNKNOWN


def _oldest(into: dict[str, float], key: str, age: float | None) -> None:
    if age is not None and age > into.get(key, -1.0):
        into[key] = age


def server_samples(snap: Snapshot, findings: Sequence[Finding], caps: Caps | None = None,
                   ) -> list[Sample]:
    """The server's samples for one snapshot (pure; no I/O). Ages are seconds (floats) at the
    snapshot's instant; applications past ``caps.applications`` are summed (or, for ages, the
    oldest taken) under ``(other)``. A summary snapshot gives the same samples as a complete one
    of the same instant."""
    caps = caps or Caps()
    groups = snap.session_groups()
    clients = [g for g in groups if g.is_client_backend]
    apps: Counter[str] = Counter()
    users: Counter[str] = Counter()
    dbs: Counter[str] = Counter()
    for g in clients:
        apps[g.label] += g.sessions
        users[g.user or UNKNOWN] += g.sessions
        dbs[g.database or UNKNOWN] += g.sessions
    app_of = LabelCap(apps, caps.applications)
    user_of = LabelCap(users, caps.users)
    db_of = LabelCap(dbs, caps.databases)
    st = snap.settings
    server = snap.server
    out: list[Sample] = [
        info_sample(SERVER, (), {"version": server.version, "role": server.role,
                                 "sees_all_sessions": str(server.sees_all_sessions).lower(),
                                 "in_recovery": str(server.in_recovery).lower()}),
        Sample(SNAPSHOT_TIME, (), snap.taken_at.timestamp()),
        Sample(SLOTS_MAX, (), st.max_connections),
        Sample(SLOTS_RESERVED, ("superuser",), st.superuser_reserved_connections),
        Sample(SLOTS_RESERVED, ("reserved",), st.reserved_connections),
        Sample(SLOTS_USABLE, (), snap.usable_slots),
        Sample(SLOTS_USED, (), snap.used_slots),
        Sample(USAGE, (), snap.usage),
        Sample(SESSIONS_HIDDEN, (), snap.hidden_sessions),
    ]
    sessions: Counter[tuple[str, str, str, str]] = Counter()
    idle: dict[str, float] = {}
    in_tx: dict[str, float] = {}
    xact: dict[str, float] = {}
    query: dict[str, float] = {}
    for g in clients:
        app = app_of(g.label)
        state = _state(g)
        sessions[(app, user_of(g.user or UNKNOWN), db_of(g.database or UNKNOWN), state)] += (
            g.sessions)
        if state == IDLE:
            _oldest(idle, app, g.oldest_state_age)
        elif g.in_transaction:
            _oldest(in_tx, app, g.oldest_state_age)
        elif state == "active":
            _oldest(query, app, g.oldest_query_age)
        _oldest(xact, app, g.oldest_xact_age)
    out.extend(Sample(SESSIONS, key, n) for key, n in sorted(sessions.items()))
    others: Counter[str] = Counter()
    for g in groups:
        if not g.is_client_backend:
            others[g.backend_type or UNKNOWN] += g.sessions
    out.extend(Sample(BACKENDS, (t,), n) for t, n in sorted(others.items()))
    for spec, ages in ((OLDEST_IDLE, idle), (OLDEST_IDLE_IN_TRANSACTION, in_tx),
                       (OLDEST_TRANSACTION, xact), (OLDEST_QUERY, query)):
        out.extend(Sample(spec, (app,), age) for app, age in sorted(ages.items()))
    # lock waits from the sessions (a summary holds every waiter and every blocker)
    waiting: Counter[tuple[str, str]] = Counter()
    blockers: set[int] = set()
    by_pid = snap.by_pid()
    for s in snap.client_backends:
        if s.blocking_pids:
            blocker = by_pid.get(s.blocking_pids[0])
            waiting[(app_of(s.label), app_of(blocker.label) if blocker is not None
                     else UNKNOWN)] += 1
            blockers.update(s.blocking_pids)
    out.extend(Sample(LOCK_WAITING, key, n) for key, n in sorted(waiting.items()))
    blocking: Counter[tuple[str, str]] = Counter()
    for pid in blockers:
        b = by_pid.get(pid)
        blocking[(app_of(b.label), _state(b)) if b is not None else (UNKNOWN, UNKNOWN)] += 1
    out.extend(Sample(LOCK_BLOCKING, key, n) for key, n in sorted(blocking.items()))
    if snap.sessions_total is not None:
        out.append(Sample(SESSIONS_ESTABLISHED, (), snap.sessions_total))
    by_finding = Counter((f.id, f.severity) for f in findings)
    out.extend(Sample(FINDINGS, key, n) for key, n in sorted(by_finding.items()))
    return out


class TargetScraper:
    """Snapshots of one server for the exporter (thread-safe).

    Args:
        target: where to connect (resolved with ``command="exporter"``, so the session is named
            ``pgwarden-exporter``).
        min_interval: seconds a snapshot is reused for (>= 0; 0 takes one per scrape).
        caps: label caps (:class:`Caps`).
        thresholds: the doctor's thresholds for the findings gauge (defaults of
            :class:`~pgwarden.doctor.rules.Thresholds`).

    Raises:
        ConfigError: ``min_interval`` below 0.
    """

    def __init__(self, target: Target, *, min_interval: float = DEFAULT_MIN_INTERVAL,
                 caps: Caps | None = None, thresholds: Thresholds | None = None) -> None:
        if not min_interval >= 0:
            raise ConfigError(f"min interval must be >= 0 seconds (got {min_interval!r})")
        self.target = target
        self.min_interval = float(min_interval)
        self.caps = caps or Caps()
        self.thresholds = (thresholds or Thresholds()).validate()
        self._notable = self.thresholds.notable()
        self.snapshots = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._samples: list[Sample] = []
        self._taken = -float("inf")
        self._up: bool | None = None
        self._problem: str | None = None

    @property
    def label(self) -> str:
        """The ``target`` label value: ``user@host:port/db``, never a password."""
        return self.target.where

    @property
    def up(self) -> bool | None:
        """Whether the last snapshot succeeded (``None`` before the first)."""
        return self._up

    def samples(self) -> list[Sample]:
        """The samples of the last snapshot, taking a new one when the last is older than
        ``min_interval`` seconds. Never raises for a database failure: ``pgwarden_up`` says it.
        """
        with self._lock:
            now = time.monotonic()
            if now - self._taken < self.min_interval:
                return self._samples
            self._taken = now
            started = time.perf_counter()
            up = self._specs[0]
            try:
                body = self._body()
            except (ConnectError, ConfigError, psycopg.Error) as exc:
                self.errors += 1
                self._down(exc)
                self._samples = [Sample(up, (), 0.0), *self._counters()]
                return self._samples
            self.snapshots += 1
            if self._up is False:
                logger.warning("%s is back: %s 1", self.label, up.name)
            self._up, self._problem = True, None
            self._samples = [Sample(up, (), 1.0),
                             Sample(self._specs[1], (), time.perf_counter() - started),
                             *self._counters(), *body]
            return self._samples

    #: up, scrape duration, snapshots, scrape errors (a subclass for another source names its
    #: own: :class:`pgwarden.metrics.pgbouncer.BouncerScraper`)
    _specs = (UP, SCRAPE_DURATION, SNAPSHOTS, SCRAPE_ERRORS)

    def _counters(self) -> list[Sample]:
        return [Sample(self._specs[2], (), self.snapshots),
                Sample(self._specs[3], (), self.errors)]

    def _body(self) -> list[Sample]:
        """One snapshot's samples (the doctor's rules on it included)."""
        snap = self._snapshot()
        findings = evaluate(snap, self.thresholds)
        return server_samples(snap, findings, self.caps)

    def _open(self) -> psycopg.Connection[Any]:
        return connect(self.target)

    def check_target(self) -> None:
        """Connect once, before serving: a target of the wrong kind (PgBouncer's admin console
        given as a PostgreSQL target, or the reverse) is a usage error at once; a target that
        is down or full is left to the scrapes (``up 0``). The connection is kept for the
        first scrape.

        Raises:
            ConfigError: the target is of the wrong kind.
        """
        with self._lock:
            if self._conn is not None:
                return
            with contextlib.suppress(ConnectError, psycopg.Error):
                self._conn = self._open()

    def _take(self, conn: psycopg.Connection[Any]) -> Any:
        return postgres.take_summary(conn, self._notable, query_chars=0)

    def _snapshot(self) -> Snapshot:
        """A snapshot on the long-lived connection; a connection found lost (a restart, a
        terminated session) is replaced once within the same scrape, so the line logged says
        what the server does now (refuses, is starting up...), not that an old session ended."""
        for attempt in (1, 2):
            conn = self._conn
            fresh = conn is None or conn.closed or conn.broken
            if fresh:
                self.close()
                conn = self._conn = self._open()
                logger.info("%s: connected as backend %s", self.label, conn.info.backend_pid)
            assert conn is not None
            try:
                return self._take(conn)  # type: ignore[no-any-return]
            except psycopg.OperationalError:
                self.close()
                if fresh or attempt == 2:
                    raise
            except psycopg.Error:
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _down(self, exc: BaseException) -> None:
        """One log line when the target goes down or fails differently than before."""
        if isinstance(exc, ConnectError):
            d = by_id(exc.diagnosis_id)
            meaning = f" ({d.title})" if d is not None else ""
            problem = f"cannot connect: {exc.server_said or exc}{meaning}"
        elif isinstance(exc, ConfigError):
            problem = str(exc)
        else:
            failure = classify(exc)
            meaning = f" ({failure.title})" if failure.title else ""
            problem = f"lost the connection: {failure.said}{meaning}"
        if problem != self._problem:
            logger.warning("%s: %s 0: %s", self.label, self._specs[0].name, problem)
        else:
            logger.debug("%s: still down: %s", self.label, problem)
        self._up, self._problem = False, problem

    def close(self) -> None:
        """Close the connection (the next scrape reconnects). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("closing the exporter's connection failed", exc_info=True)


class ServerCollector:
    """A ``prometheus_client`` collector of one or more servers' metrics.

    Args:
        scrapers: one :class:`TargetScraper` per server; with more than one, every sample gets
            a ``target`` label (their :attr:`TargetScraper.label`).

    Raises:
        ConfigError: no scraper, or two with the same label.
    """

    def __init__(self, scrapers: Sequence[TargetScraper]) -> None:
        if not scrapers:
            raise ConfigError("the exporter needs at least one target")
        labels = [s.label for s in scrapers]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ConfigError(f"the same target was given twice: {', '.join(dupes)}")
        self.scrapers = tuple(scrapers)

    def describe(self) -> Iterable[Metric]:
        # no snapshot when the collector is registered
        return ()

    def collect(self) -> Iterator[Metric]:
        if len(self.scrapers) == 1:
            groups: list[tuple[tuple[str, ...], list[Sample]]] = [
                ((), self.scrapers[0].samples())]
            return iter(families(groups))
        groups = [((s.label,), s.samples()) for s in self.scrapers]
        return iter(families(groups, extra_labels=("target",)))

    def close(self) -> None:
        for s in self.scrapers:
            s.close()
