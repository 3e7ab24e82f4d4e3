"""The doctor's rules: pure functions from a snapshot to findings.

Each rule looks at one :class:`~pgwarden.sources.postgres.Snapshot` (and, for the churn rate,
an earlier one) and returns findings. No I/O happens here; :mod:`pgwarden.doctor.run` takes
the snapshots.

The rules count every session through the snapshot's counts (``used_slots``, ``count_by``,
``hidden_sessions``) and look at single sessions only where one of them can be named: the
sessions :meth:`Thresholds.notable` describes, read from ``client_backends`` (with their
queries and locks) or, by the rules that only count them, ``client_briefs()``. So they find the
same on a summary snapshot (``take_summary``: counts plus those sessions, the exporter's) as on
a complete one.

Severity: ``critical`` means the server refuses (or is about to refuse) connections;
``warning`` means sessions are being wasted or a problem is building; ``info`` is advice
that never fails a health check.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..sources.postgres.records import (
    ACTIVE,
    IDLE,
    Notable,
    Session,
    SessionFacts,
    Snapshot,
    role_sql,
)

__all__ = [
    "RULES",
    "SEVERITIES",
    "Finding",
    "Sample",
    "Thresholds",
    "evaluate",
    "server_full_finding",
    "status_of",
    "visibility_finding",
]

SEVERITIES = ("info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor found.

    Attributes:
        id: stable identifier (``saturation``, ``idle_in_transaction``, ...).
        severity: ``info``, ``warning`` or ``critical``.
        title: one line for humans.
        applications: the ``application_name`` values responsible, most responsible first.
        pids: backend pids involved, most relevant first.
        evidence: the numbers behind it (counts, ages in seconds, settings), JSON-ready.
        fix: what to do: a setting, a SQL statement or a code pattern.
    """

    id: str
    severity: str
    title: str
    fix: str
    applications: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return _RANK[self.severity]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "applications": list(self.applications),
            "pids": list(self.pids),
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where each rule starts to speak. Seconds are floats.

    Defaults: ``idle_in_transaction_after`` 60 s and ``idle_after`` 300 s follow the common
    advice for ``idle_in_transaction_session_timeout`` and pool ``max_idle`` (psycopg_pool's
    ``max_idle`` is 600 s, HikariCP's ``idleTimeout`` 600 s); ``saturation_*`` at 80 %/95 %
    of usable slots are the usual alerting levels.

    Raises:
        ValueError: a threshold out of range (from :meth:`validate`).
    """

    saturation_warning: float = 0.80
    saturation_critical: float = 0.95
    idle_in_transaction_after: float = 60.0
    idle_after: float = 300.0
    idle_hoarding_min_sessions: int = 5
    long_query_after: float = 300.0
    churn_young_age: float = 2.0
    churn_min_young: int = 5
    churn_rate: float = 5.0
    unnamed_min_sessions: int = 5
    max_connections_high: int = 500
    keepalive_detect_after: float = 600.0
    pids_shown: int = 20

    def validate(self) -> Thresholds:
        if not 0 < self.saturation_warning <= self.saturation_critical <= 1.5:
            raise ValueError(
                "saturation thresholds must satisfy 0 < warning <= critical <= 1.5 "
                f"(got {self.saturation_warning} and {self.saturation_critical})"
            )
        for name in ("idle_in_transaction_after", "idle_after", "long_query_after",
                     "churn_young_age", "churn_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds (got {getattr(self, name)})")
        return self

    def notable(self) -> Notable:
        """The sessions these rules can name, for a summary snapshot
        (:func:`pgwarden.sources.postgres.take_summary`): as records, those idle in transaction
        past ``idle_in_transaction_after`` (idle_in_transaction), active past
        ``long_query_after`` (long_running_query), waiting on a lock or blocking one
        (lock_blocking, idle_in_transaction's severity); in brief
        (:meth:`Snapshot.client_briefs`), those idle past ``idle_after`` (idle_hoarding),
        younger than ``churn_young_age`` (connection_churn) or unnamed (unnamed_clients).

        Raises:
            ValueError: a threshold out of range.
        """
        self.validate()
        return Notable(
            idle_in_transaction_after=self.idle_in_transaction_after,
            idle_after=self.idle_after,
            long_query_after=self.long_query_after,
            young_age=self.churn_young_age,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """What ``--sample`` saw between two snapshots.

    Attributes:
        previous: the first snapshot.
        new_sessions: client sessions that started during the sample, by application
            (polled, so it includes sessions that ended before the second snapshot).
    """

    previous: Snapshot
    new_sessions: Mapping[str, int] = field(default_factory=dict)


Rule = Callable[[Snapshot, Thresholds, Sample | None], list[Finding]]


def _apps(sessions: Iterable[Session]) -> tuple[str, ...]:
    return tuple(app for app, _ in Counter(s.label for s in sessions).most_common())


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def saturation(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Client backends over usable slots at or above the warning / critical levels."""
    usage = snap.usage
    if usage < t.saturation_warning:
        return []
    severity = "critical" if usage >= t.saturation_critical else "warning"
    by_app = snap.count_by("application").most_common()
    top = ", ".join(f"{app} {n}" for app, n in by_app[:5])
    s = snap.settings
    return [
        Finding(
            id="saturation",
            severity=severity,
            title=f"{snap.used_slots} of {snap.usable_slots} usable connection slots in use "
            f"({usage:.0%}); biggest holders: {top}",
            applications=tuple(app for app, _ in by_app),
            evidence={
                "used_slots": snap.used_slots,
                "usable_slots": snap.usable_slots,
                "usage": round(usage, 4),
                "max_connections": s.max_connections,
                "superuser_reserved_connections": s.superuser_reserved_connections,
                "reserved_connections": s.reserved_connections,
                "by_application": dict(by_app),
                "by_state": dict(snap.count_by("state")),
            },
            fix="Free slots held by idle sessions (see the idle findings, or "
            "`pgwarden guard --once --enforce --idle-after 600`), then make the pools fit: "
            "the sum of every process's pool max_size (processes x max_size, per service) "
            "must stay below the usable slots. "
            "If the clients genuinely need more sessions, put PgBouncer (transaction pooling) "
            "in front instead of raising max_connections.",
        )
    ]


def idle_in_transaction(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Sessions idle inside a transaction longer than the threshold, one finding per
    application. They hold locks and snapshots (blocking vacuum) and a slot."""
    stale: dict[str, list[Session]] = defaultdict(list)
    blocking = {p for x in snap.sessions for p in x.blocking_pids}
    for s in snap.client_backends:
        if s.in_transaction and (s.state_age or 0) >= t.idle_in_transaction_after:
            stale[s.label].append(s)
    findings = []
    for app, group in sorted(stale.items(), key=lambda kv: -len(kv[1])):
        group.sort(key=lambda s: -(s.xact_age or 0))
        oldest = group[0]
        blockers = [s.pid for s in group if s.pid in blocking]
        findings.append(
            Finding(
                id="idle_in_transaction",
                severity="critical" if blockers else "warning",
                title=f"{app}: {len(group)} session(s) idle in transaction for up to "
                f"{_fmt_age(oldest.state_age)}"
                + (f", {len(blockers)} blocking others" if blockers else ""),
                applications=(app,),
                pids=tuple(s.pid for s in group[: t.pids_shown]),
                evidence={
                    "sessions": len(group),
                    "oldest_idle_seconds": round(oldest.state_age or 0, 1),
                    "oldest_transaction_seconds": round(oldest.xact_age or 0, 1),
                    "blocking_pids": blockers,
                    "last_query": oldest.query,
                    "threshold_seconds": t.idle_in_transaction_after,
                },
                fix=f"In {app}, commit or roll back before slow work; use "
                "`with conn.transaction():` / `with pool.transaction() as conn:` so an "
                "exception always ends the transaction. As a safety net set "
                "`ALTER ROLE ... SET idle_in_transaction_session_timeout = '60s'`. "
                f"To free them now: SELECT pg_terminate_backend(pid) for pids "
                f"{', '.join(map(str, [s.pid for s in group[:10]]))}.",
            )
        )
    return findings


def idle_hoarding(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """An application holding many sessions idle for longer than ``idle_after``: a leak (a
    connection never closed) or a pool far larger than its load."""
    idle: dict[str, list[SessionFacts]] = defaultdict(list)
    for s in snap.client_briefs():
        if s.state == IDLE and (s.state_age or 0) >= t.idle_after:
            idle[s.label].append(s)
    findings = []
    for app, group in sorted(idle.items(), key=lambda kv: -len(kv[1])):
        if len(group) < t.idle_hoarding_min_sessions:
            continue
        group.sort(key=lambda s: -(s.state_age or 0))
        total = snap.count_by("application")[app]
        share = len(group) / snap.usable_slots if snap.usable_slots else 1.0
        findings.append(
            Finding(
                id="idle_hoarding",
                severity="warning",
                title=f"{app}: {len(group)} of its {total} sessions idle for more than "
                f"{_fmt_age(t.idle_after)} (oldest {_fmt_age(group[0].state_age)}), "
                f"{share:.0%} of the usable slots",
                applications=(app,),
                pids=tuple(s.pid for s in group[: t.pids_shown]),
                evidence={
                    "idle_sessions": len(group),
                    "sessions": total,
                    "oldest_idle_seconds": round(group[0].state_age or 0, 1),
                    "share_of_usable_slots": round(share, 4),
                    "users": sorted({s.user or "?" for s in group}),
                    "client_addrs": sorted({s.client_addr or "?" for s in group}),
                    "threshold_seconds": t.idle_after,
                },
                fix=f"If {app} uses a pool, lower its idle size (psycopg_pool min_size / "
                "max_idle, SQLAlchemy pool_size, pgwarden.ConnectionPool max_idle). If it "
                "opens connections itself, they leak: close them (`with psycopg.connect(...)"
                " as conn:`) or return them (`with pool.connection() as conn:` instead of "
                "getconn() without putconn() on the error path). pgwarden.ConnectionPool "
                "names such leaks with their stack.",
            )
        )
    return findings


def connection_churn(snap: Snapshot, t: Thresholds, sample: Sample | None) -> list[Finding]:
    """Connection-per-request behaviour: a high rate of new sessions between two snapshots
    (``pg_stat_database.sessions``, PostgreSQL 14+; else new pids), or many very young backends
    of one application in a single snapshot."""
    young = [s for s in snap.client_briefs()
             if s.backend_age is not None and s.backend_age < t.churn_young_age]
    rate: float | None = None
    by_app_new: Counter[str] = Counter()
    elapsed = 0.0
    if sample is not None:
        prev = sample.previous
        elapsed = (snap.taken_at - prev.taken_at).total_seconds()
        old_pids = {s.pid for s in prev.sessions}
        by_app_new = Counter({(app or "(no application_name)"): n
                              for app, n in sample.new_sessions.items()})
        if not by_app_new:
            by_app_new = Counter(s.label for s in snap.client_backends if s.pid not in old_pids)
        if elapsed > 0:
            if snap.sessions_total is not None and prev.sessions_total is not None:
                # pg_stat_database.sessions counts every session, even the shortest
                rate = (snap.sessions_total - prev.sessions_total) / elapsed
            else:
                rate = sum(by_app_new.values()) / elapsed
    if rate is not None and rate >= t.churn_rate:
        apps = tuple(app for app, _ in by_app_new.most_common()) or ("(unknown)",)
        return [
            Finding(
                id="connection_churn",
                severity="warning",
                title=f"{rate:.1f} new sessions per second"
                + ("; seen starting while sampling: "
                   + ", ".join(f"{a} {n}" for a, n in by_app_new.most_common(4))
                   if by_app_new else ""),
                applications=apps,
                pids=tuple(s.pid for s in young[: t.pids_shown]),
                evidence={
                    "new_sessions_per_second": round(rate, 2),
                    "new_sessions_by_application": dict(by_app_new.most_common()),
                    "sample_seconds": round(elapsed, 3),
                    "threshold_per_second": t.churn_rate,
                },
                fix=_CHURN_FIX,
            )
        ]
    findings = []
    for app, n in Counter(s.label for s in young).most_common():
        if n < t.churn_min_young:
            break
        group = [s for s in young if s.label == app]
        findings.append(
            Finding(
                id="connection_churn",
                severity="warning",
                title=f"{app}: {n} sessions younger than {t.churn_young_age:g} s: looks like "
                "a new connection per request",
                applications=(app,),
                pids=tuple(s.pid for s in group[: t.pids_shown]),
                evidence={
                    "young_sessions": n,
                    "young_age_seconds": t.churn_young_age,
                    "new_sessions_per_second": round(rate, 2) if rate is not None else None,
                },
                fix=_CHURN_FIX,
            )
        )
    return findings


_CHURN_FIX = (
    "Open connections once and reuse them: a pool per process (pgwarden.ConnectionPool, "
    "psycopg_pool, SQLAlchemy's QueuePool) instead of psycopg.connect() per request or job. "
    "Each new session costs a fork, authentication and cache warm-up on the server. Where "
    "processes are short-lived (serverless, cron), put PgBouncer in front."
)


def lock_blocking(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Sessions waiting on locks held by others, grouped by blocking pid."""
    by_pid = snap.by_pid()
    waiting: dict[int, list[Session]] = defaultdict(list)
    for s in snap.sessions:
        for pid in s.blocking_pids:
            waiting[pid].append(s)
    findings = []
    for blocker_pid, waiters in sorted(waiting.items(), key=lambda kv: -len(kv[1])):
        blocker = by_pid.get(blocker_pid)
        b_app = blocker.label if blocker else "(unknown)"
        b_state = (blocker.state if blocker else None) or "unknown state"
        longest = max((w.state_age or 0) for w in waiters)
        tx_hint = (
            " It is idle in transaction: the code that opened the transaction is not "
            "finishing it." if blocker is not None and blocker.in_transaction else ""
        )
        findings.append(
            Finding(
                id="lock_blocking",
                severity="critical" if longest >= t.idle_in_transaction_after else "warning",
                title=f"pid {blocker_pid} ({b_app}, {b_state}) blocks {len(waiters)} "
                f"session(s), waiting up to {_fmt_age(longest)}",
                applications=tuple(dict.fromkeys([b_app, *_apps(waiters)])),
                pids=(blocker_pid, *[w.pid for w in waiters[: t.pids_shown]]),
                evidence={
                    "blocking_pid": blocker_pid,
                    "blocking_application": b_app,
                    "blocking_state": b_state,
                    "blocking_query": blocker.query if blocker else None,
                    "blocking_transaction_seconds": round(blocker.xact_age or 0, 1)
                    if blocker else None,
                    "waiting_pids": [w.pid for w in waiters],
                    "longest_wait_seconds": round(longest, 1),
                },
                fix=f"End pid {blocker_pid}'s transaction (SELECT pg_terminate_backend("
                f"{blocker_pid}) frees the waiters now).{tx_hint} Keep transactions short and "
                "take locks in a consistent order; set lock_timeout for the waiters.",
            )
        )
    return findings


def long_running_query(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Active queries running longer than ``long_query_after``."""
    slow = sorted(
        (s for s in snap.client_backends
         if s.state == ACTIVE and (s.query_age or 0) >= t.long_query_after),
        key=lambda s: -(s.query_age or 0),
    )
    if not slow:
        return []
    return [
        Finding(
            id="long_running_query",
            severity="warning",
            title=f"{len(slow)} quer{'y' if len(slow) == 1 else 'ies'} running longer than "
            f"{_fmt_age(t.long_query_after)} (longest {_fmt_age(slow[0].query_age)}, "
            f"pid {slow[0].pid}, {slow[0].label})",
            applications=_apps(slow),
            pids=tuple(s.pid for s in slow[: t.pids_shown]),
            evidence={
                "queries": len(slow),
                "longest_seconds": round(slow[0].query_age or 0, 1),
                "longest_query": slow[0].query,
                "threshold_seconds": t.long_query_after,
            },
            fix="Look at the query plan (EXPLAIN ANALYZE); cancel it with SELECT "
            f"pg_cancel_backend({slow[0].pid}). Bound queries with statement_timeout "
            "(ALTER ROLE app SET statement_timeout = '30s').",
        )
    ]


def unnamed_clients(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Many sessions without ``application_name``: nobody can tell whose they are."""
    unnamed = [s for s in snap.client_briefs() if not s.application]
    if len(unnamed) < t.unnamed_min_sessions:
        return []
    users = Counter(s.user or "?" for s in unnamed)
    addrs = Counter(s.client_addr or "?" for s in unnamed)
    return [
        Finding(
            id="unnamed_clients",
            severity="info",
            title=f"{len(unnamed)} sessions have no application_name "
            f"(users: {', '.join(u for u, _ in users.most_common(3))})",
            applications=("(no application_name)",),
            pids=tuple(s.pid for s in unnamed[: t.pids_shown]),
            evidence={
                "sessions": len(unnamed),
                "by_user": dict(users),
                "by_client_addr": dict(addrs),
            },
            fix="Name every client: add application_name to the DSN "
            "(postgresql://...?application_name=orders-api) or set PGAPPNAME; "
            "pgwarden.ConnectionPool sets one by default.",
        )
    ]


def setting_idle_in_transaction_timeout(
    snap: Snapshot, t: Thresholds, _sample: Sample | None
) -> list[Finding]:
    """``idle_in_transaction_session_timeout`` is off (PostgreSQL's default)."""
    if snap.settings.idle_in_transaction_session_timeout > 0:
        return []
    return [
        Finding(
            id="setting_idle_in_transaction_timeout",
            severity="info",
            title="idle_in_transaction_session_timeout is off: an abandoned transaction holds "
            "its locks and slot forever",
            evidence={"idle_in_transaction_session_timeout": 0},
            fix="Set it per role rather than globally (migrations may need longer): "
            "ALTER ROLE app SET idle_in_transaction_session_timeout = '60s'; or server-wide "
            "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
            "SELECT pg_reload_conf();",
        )
    ]


def setting_tcp_keepalives(snap: Snapshot, t: Thresholds, _sample: Sample | None) -> list[Finding]:
    """Server TCP keepalives at the OS default (first probe after 2 h on Linux): sessions of
    clients that vanished (crashed pods, NAT drops) hold slots for hours."""
    s = snap.settings
    idle = s.tcp_keepalives_idle
    detect = idle + s.tcp_keepalives_interval * s.tcp_keepalives_count
    if idle and detect <= t.keepalive_detect_after:
        return []
    return [
        Finding(
            id="setting_tcp_keepalives",
            severity="info",
            title=f"TCP keepalives notice a dead client only after ~{_fmt_age(detect or 7200)}"
            " (OS default): sessions of vanished clients hold slots that long",
            evidence={
                "tcp_keepalives_idle": idle,
                "tcp_keepalives_interval": s.tcp_keepalives_interval,
                "tcp_keepalives_count": s.tcp_keepalives_count,
                "detect_after_seconds": detect,
            },
            fix="ALTER SYSTEM SET tcp_keepalives_idle = 60; ALTER SYSTEM SET "
            "tcp_keepalives_interval = 10; ALTER SYSTEM SET tcp_keepalives_count = 6; "
            "SELECT pg_reload_conf(); (and client_connection_check_interval = '10s' on "
            "PostgreSQL 14+ to stop queries of vanished clients)",
        )
    ]


def setting_max_connections_high(
    snap: Snapshot, t: Thresholds, _sample: Sample | None
) -> list[Finding]:
    """A very high ``max_connections``: each backend costs memory and the snapshot cost
    grows with it; PgBouncer serves many clients with few server sessions."""
    mc = snap.settings.max_connections
    if mc < t.max_connections_high:
        return []
    pooler = any(app.lower().startswith(("pgbouncer", "pgcat", "odyssey")) for app in
                 snap.count_by("application"))
    return [
        Finding(
            id="setting_max_connections_high",
            severity="info" if pooler else "warning",
            title=f"max_connections is {mc}"
            + (" (a pooler is connected)" if pooler else " and no pooler is in front"),
            evidence={"max_connections": mc, "pooler_seen": pooler,
                      "client_backends": snap.used_slots},
            fix="Put PgBouncer in front (pool_mode = transaction) and lower max_connections "
            "to what the server's cores and memory serve well (often 100-300); "
            "size PgBouncer's default_pool_size to the sum the server serves well.",
        )
    ]


RULES: tuple[Rule, ...] = (
    saturation,
    idle_in_transaction,
    lock_blocking,
    idle_hoarding,
    connection_churn,
    long_running_query,
    unnamed_clients,
    setting_idle_in_transaction_timeout,
    setting_tcp_keepalives,
    setting_max_connections_high,
)


def visibility_finding(snap: Snapshot) -> Finding | None:
    """Say what the doctor could not see when the role lacks ``pg_monitor``."""
    hidden = snap.hidden_sessions
    if snap.server.sees_all_sessions or not hidden:
        return None
    return Finding(
        id="limited_visibility",
        severity="info",
        title=f"{hidden} sessions of other roles are hidden from role {snap.server.role}: "
        "their state, age and query are unknown, so idle and lock findings may be missing",
        evidence={"hidden_sessions": hidden, "role": snap.server.role},
        fix=f"GRANT pg_monitor TO {role_sql(snap.server.role)}; (or run the doctor as a role "
        "that has it)",
    )


def server_full_finding(message: str, *, reserve_full: bool) -> Finding:
    """The finding for a server that refused pgwarden itself for lack of a slot (53300).

    Args:
        message: what the server said.
        reserve_full: the server said "too many clients already": even the reserved slots
            (``superuser_reserved_connections``, ``reserved_connections``) are taken, so
            connecting as a superuser will not help either.
    """
    if reserve_full:
        title = ("the server refused a new connection: every slot is taken, the superuser "
                 "reserve too (too many clients already, SQLSTATE 53300)")
        fix = ("No new session gets in, not even a superuser's. Free one from a session that "
               "is already connected (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE state = 'idle' AND application_name = '...'), or stop or restart one of "
               "the client applications; on the server's host `pg_ctl kill TERM PID` ends one "
               "idle backend. Then run `pgwarden doctor` as a superuser to see who holds the "
               "slots, and keep superuser_reserved_connections free for that.")
    else:
        title = ("the server refused a new connection: only the reserved slots are left "
                 "(SQLSTATE 53300)")
        fix = ("Get in through the reserved slots to see who holds the rest: connect as a "
               "superuser (superuser_reserved_connections, default 3) or, on PostgreSQL 16+, as "
               "a role granted pg_use_reserved_connections (reserved_connections), e.g. "
               "`pgwarden doctor --dsn postgresql://postgres@HOST/DB`. Free slots now with "
               "`pgwarden guard --once --enforce --emergency-at 0.9 --emergency-target 0.7` from "
               "such a role.")
    return Finding(
        id="server_full",
        severity="critical",
        title=title,
        evidence={"server_said": message, "reserve_full": reserve_full},
        fix=fix,
    )


def evaluate(
    snap: Snapshot,
    thresholds: Thresholds | None = None,
    sample: Sample | None = None,
    *,
    rules: Iterable[Rule] = RULES,
) -> list[Finding]:
    """Run every rule; findings ordered by severity (critical first), then rule order.

    Args:
        snap: the current snapshot, complete or a summary taken with ``t.notable()`` (the same
            findings).
        thresholds: defaults from :class:`Thresholds`.
        sample: what ``--sample`` saw (an earlier snapshot, new sessions) for rate rules.

    Raises:
        ValueError: a summary snapshot that lacks sessions these thresholds can name (taken
            with other thresholds' ``notable()``), or a ``sample`` with a summary (new sessions
            are told by comparing every pid of two complete snapshots).
    """
    t = thresholds or Thresholds()
    if snap.notable is not None and not snap.notable.covers(t.notable()):
        raise ValueError(f"the summary snapshot holds the sessions of {snap.notable}, not all "
                         f"those these thresholds can name ({t.notable()})")
    if sample is not None and not (snap.complete and sample.previous.complete):
        raise ValueError("a sample needs complete snapshots (postgres.take), not summaries")
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(rule(snap, t, sample))
    vis = visibility_finding(snap)
    if vis is not None:
        findings.append(vis)
    return sorted(findings, key=lambda f: -f.rank)


def status_of(findings: Iterable[Finding]) -> str:
    """``ok`` (nothing above info), ``warning`` or ``critical``."""
    worst = max((f.rank for f in findings), default=0)
    return {0: "ok", 1: "warning", 2: "critical"}[worst]

