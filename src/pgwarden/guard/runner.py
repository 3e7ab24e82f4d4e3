"""One guard pass: snapshot, policy, (leader lock,) act, audit, count.

:class:`Guard` is the API the daemon, the CLI and the demo share::

    from pgwarden.guard import Guard, Policy, Rule

    policy = Policy(rules=(Rule("idle", "idle", after=300.0),))
    with Guard("postgresql://guard@db/postgres", policy, enforce=True, audit=["-"]) as guard:
        result = guard.run_pass()
        print(result.terminated_pids, result.usage, result.projected_usage)

Acting is race-safe: the terminate/cancel statement matches the chosen session's pid together
with its ``backend_start``, ``state`` and ``state_change`` (``do_terminate.sql``), so a pid reused
by a new session, or a session that ran a query since it was chosen, is not hit; the outcome then
says ``skipped`` with why (``gone``, ``pid_reused``, ``state_changed``).

One guard acts per database: when enforcing, a guard takes the session-level advisory lock
:data:`LOCK_KEY` on its own (only) session before acting; a guard that cannot get it is on
standby (plans, does not act, retries every pass) and takes over once the holder's session ends.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
from psycopg.rows import dict_row

from ..conninfo import Target, connect, resolve
from ..diagnose import server_message
from ..errors import PermissionMissing
from ..sources.postgres import Session, Snapshot, take
from ..sources.postgres.queries import query as _q
from ..sources.postgres.records import role_sql
from .audit import AuditLog, AuditRecord, iso, now_iso
from .metrics import GuardMetrics
from .policy import Action, Plan, Policy, Skip, decide

__all__ = [
    "LOCK_KEY",
    "Guard",
    "Outcome",
    "PassResult",
    "Signalled",
    "signal_backend",
]

logger = logging.getLogger("pgwarden.guard")

#: The advisory lock key guards compete for: 0x7067776172640001 ("pgward" + 1) as a bigint.
#: In ``pg_locks`` it shows as ``locktype='advisory', classid=1885828961, objid=1919156225,
#: objsubid=1``.
LOCK_KEY = 0x7067776172640001

_IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one decision.

    Attributes:
        time: ISO 8601 UTC time it was carried out.
        rule: rule name or ``emergency``.
        action: ``terminate`` or ``cancel``.
        outcome: ``would_terminate``, ``would_cancel``, ``terminated``, ``cancelled``,
            ``skipped`` or ``failed``.
        skip: for ``skipped``: ``protected``, ``limit_per_pass``, ``limit_per_minute``,
            ``standby``, ``gone``, ``pid_reused``, ``state_changed``; else ``None``.
        reason: for humans.
        session: the session as the snapshot saw it (:class:`pgwarden.sources.postgres.Session`).
    """

    time: str
    rule: str
    action: str
    outcome: str
    skip: str | None
    reason: str
    session: Session

    @property
    def pid(self) -> int:
        return self.session.pid


@dataclass(frozen=True, slots=True)
class PassResult:
    """The result of one pass.

    Attributes:
        enforce: acting (False: dry run).
        leader: this guard held the lock (always True in a dry run or with ``leader_lock=False``).
        leader_pid: backend pid of the acting guard's session, where known.
        guard_pid: this guard's backend pid.
        plan: the policy's :class:`~pgwarden.guard.policy.Plan`.
        outcomes: one per action and per skip, actions first.
        snapshot: the snapshot the plan was made from.
        snapshot_duration, policy_duration, duration: seconds.
        warnings: e.g. a dry run whose role could not act.
    """

    enforce: bool
    leader: bool
    leader_pid: int | None
    guard_pid: int
    plan: Plan
    outcomes: tuple[Outcome, ...]
    snapshot: Snapshot
    snapshot_duration: float
    policy_duration: float
    duration: float
    warnings: tuple[str, ...] = ()

    @property
    def usage(self) -> float:
        return self.plan.usage

    @property
    def projected_usage(self) -> float:
        return self.plan.projected_usage

    def pids(self, *outcomes: str) -> list[int]:
        """Backend pids whose outcome is one of ``outcomes``."""
        return [o.pid for o in self.outcomes if o.outcome in outcomes]

    @property
    def terminated_pids(self) -> list[int]:
        return self.pids("terminated")

    @property
    def cancelled_pids(self) -> list[int]:
        return self.pids("cancelled")

    @property
    def would_pids(self) -> list[int]:
        """Pids a dry run would terminate or cancel."""
        return self.pids("would_terminate", "would_cancel")

    @property
    def skipped(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "skipped"]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``pgwarden guard --once --format json``)."""
        return {
            "enforce": self.enforce,
            "dry_run": not self.enforce,
            "leader": self.leader,
            "leader_pid": self.leader_pid,
            "guard_pid": self.guard_pid,
            "taken_at": iso(self.plan.taken_at),
            "used_slots": self.plan.used_slots,
            "usable_slots": self.plan.usable_slots,
            "usage": round(self.plan.usage, 4),
            "projected_usage": round(self.plan.projected_usage, 4),
            "emergency": self.plan.emergency,
            "candidates": self.plan.candidates,
            "snapshot_ms": round(self.snapshot_duration * 1000, 2),
            "policy_ms": round(self.policy_duration * 1000, 2),
            "duration_ms": round(self.duration * 1000, 2),
            "warnings": list(self.warnings),
            "outcomes": [_record(o, self).to_dict() for o in self.outcomes],
        }


def _record(o: Outcome, result: PassResult | None = None, *, dry_run: bool | None = None,
            usage: float | None = None, guard: int | None = None) -> AuditRecord:
    s = o.session
    return AuditRecord(
        time=o.time,
        dry_run=(not result.enforce) if result is not None else bool(dry_run),
        action=o.action,
        outcome=o.outcome,
        skip=o.skip,
        reason=o.reason,
        rule=o.rule,
        pid=s.pid,
        user=s.user,
        database=s.database,
        application=s.application,
        client_addr=s.client_addr,
        state=s.state,
        backend_start=iso(s.backend_start),
        idle_age=_round(s.state_age) if s.state in _IDLE_STATES else None,
        xact_age=_round(s.xact_age),
        query_age=_round(s.query_age),
        usage=round(result.plan.usage if result is not None else (usage or 0.0), 4),
        guard=result.guard_pid if result is not None else guard,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class Guard:
    """Runs guard passes against one server.

    Args:
        target: where to connect: a :class:`~pgwarden.conninfo.Target`, a DSN string (resolved
            with ``application_name=pgwarden-guard``), ``None`` ($DATABASE_URL / PG*), or an
            open autocommit ``psycopg.Connection`` (used as is, never closed nor reconnected
            here; give it an ``application_name`` starting with ``pgwarden-``).
        policy: the policy (default :class:`Policy()`).
        enforce: act (default: ``policy.enforce``); False is a dry run that changes nothing.
        audit: an :class:`AuditLog`, or destinations for one (paths, ``-``, streams); default
            ``policy.audit_log``.
        metrics: counters to update (default a new :class:`GuardMetrics`).
        leader_lock: when enforcing, act only while holding the advisory lock :data:`LOCK_KEY`
            (default True).
        lock_key: the advisory lock key (guards that should exclude each other share it).
        connect_timeout: seconds, for connections this guard opens.

    The guard keeps its one connection open between passes (it then still has a slot when the
    server fills up) and reconnects at the next pass when it was lost.
    """

    def __init__(
        self,
        target: Target | str | psycopg.Connection[Any] | None = None,
        policy: Policy | None = None,
        *,
        enforce: bool | None = None,
        audit: AuditLog | Iterable[str | TextIO] | None = None,
        metrics: GuardMetrics | None = None,
        leader_lock: bool = True,
        lock_key: int = LOCK_KEY,
        connect_timeout: float = 5.0,
    ) -> None:
        self.policy = policy if policy is not None else Policy()
        self.enforce = self.policy.enforce if enforce is None else bool(enforce)
        self._conn: psycopg.Connection[Any] | None = None
        self._owned = True
        self.target: Target | None = None
        if isinstance(target, psycopg.Connection):
            self._conn = target
            self._owned = False
        elif isinstance(target, Target):
            self.target = target
        else:
            self.target = resolve(target, command="guard", connect_timeout=connect_timeout)
        if isinstance(audit, AuditLog):
            self.audit = audit
            self._own_audit = False
        else:
            self.audit = AuditLog(self.policy.audit_log if audit is None else audit)
            self._own_audit = True
        self.metrics = metrics if metrics is not None else GuardMetrics()
        self.leader_lock = leader_lock
        self.lock_key = lock_key
        self._leader = False
        self._recent: collections.deque[float] = collections.deque()

    # -- connection ---------------------------------------------------------------------

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        return self._conn

    @property
    def is_leader(self) -> bool:
        """True while this guard's session holds the lock (as of its last pass)."""
        return self._leader

    def connect(self) -> psycopg.Connection[Any]:
        """The guard's session, (re)connecting if there is none or it was lost.

        Raises:
            ConnectError, ServerFullError: could not connect (:func:`pgwarden.conninfo.connect`).
        """
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if not self._owned:
            raise psycopg.OperationalError("the connection given to Guard is closed")
        self.disconnect()
        assert self.target is not None
        self._conn = connect(self.target)
        self._leader = False
        logger.info("guard connected to %s as backend %s", self.target.where,
                    self._conn.info.backend_pid)
        return self._conn

    def disconnect(self) -> None:
        """Close the guard's session (an owned one); releases the lock with it."""
        conn, self._conn = self._conn, None
        self._leader = False
        if conn is not None and self._owned:
            try:
                conn.close()
            except Exception:
                logger.debug("closing the guard's connection failed", exc_info=True)
        elif conn is not None:
            self._conn = conn

    def close(self) -> None:
        """Release the lock, close an owned connection and an owned audit log. Idempotent."""
        conn = self._conn
        if conn is not None and self._leader and not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):
                conn.execute(_q("do_guard_unlock", conn.info.server_version),
                             {"key": self.lock_key})
        self._leader = False
        if self._owned:
            self.disconnect()
        if self._own_audit:
            self.audit.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pass -----------------------------------------------------------------------

    def recent_actions(self, now: float | None = None) -> int:
        """Actions that hit in the last 60 seconds (for ``max_per_minute``)."""
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0] <= now - 60.0:
            self._recent.popleft()
        return len(self._recent)

    def check_permissions(self, snapshot: Snapshot) -> list[str]:
        """Raise :class:`PermissionMissing` (with the GRANT to run) if the role cannot do what
        this guard must; return warnings for a dry run that could not act."""
        server = snapshot.server
        role = role_sql(server.role)
        if not server.sees_all_sessions:
            raise PermissionMissing(
                f"role {server.role!r} cannot see other sessions' state and age; run as a "
                f"superuser: GRANT pg_monitor TO {role};"
            )
        if server.is_superuser or server.has_pg_signal_backend:
            return []
        message = (
            f"role {server.role!r} cannot cancel or terminate other sessions; run as a "
            f"superuser: GRANT pg_signal_backend TO {role};"
        )
        if self.enforce:
            raise PermissionMissing(message)
        return [message]

    def plan(self) -> tuple[Snapshot, Plan, float]:
        """Take a snapshot and decide; returns ``(snapshot, plan, policy_seconds)``. No action.

        Raises:
            PermissionMissing: see :meth:`check_permissions`.
            ConnectError: could not (re)connect.
            psycopg.Error: the connection was lost during the snapshot.
        """
        conn = self.connect()
        try:
            snapshot = take(conn)
        except psycopg.OperationalError:
            self._lost()
            raise
        started = time.perf_counter()
        plan = decide(snapshot, self.policy, recent_actions=self.recent_actions())
        return snapshot, plan, time.perf_counter() - started

    def _lost(self) -> None:
        self._leader = False
        if self._owned:
            self.disconnect()

    def _try_lead(self, conn: psycopg.Connection[Any]) -> tuple[bool, int | None]:
        version = conn.info.server_version
        if not self._leader:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(_q("get_guard_lock", version), {"key": self.lock_key}).fetchone()
            self._leader = bool(row and row["acquired"])
            if self._leader:
                logger.info("guard (backend %s) took the lock and acts", conn.info.backend_pid)
        if self._leader:
            return True, conn.info.backend_pid
        row = conn.cursor(row_factory=dict_row).execute(
            _q("get_guard_leader", version),
            {"classid": (self.lock_key >> 32) & 0xFFFFFFFF, "objid": self.lock_key & 0xFFFFFFFF},
        ).fetchone()
        return False, (int(row["pid"]) if row else None)

    def run_pass(self) -> PassResult:
        """One pass: snapshot, policy, act (when enforcing and leading), audit, metrics.

        Raises:
            PermissionMissing: the role lacks pg_monitor (or pg_signal_backend when enforcing).
            ConnectError, ServerFullError: could not (re)connect.
            psycopg.OperationalError: the connection was lost during the pass (the next pass
                reconnects).
        """
        started = time.perf_counter()
        try:
            snapshot, plan, policy_seconds = self.plan()
            return self.act(snapshot, plan, policy_duration=policy_seconds, started=started)
        except psycopg.OperationalError:
            self.metrics.record_error()
            raise

    def act(
        self,
        snapshot: Snapshot,
        plan: Plan,
        *,
        policy_duration: float = 0.0,
        started: float | None = None,
    ) -> PassResult:
        """Carry out ``plan`` (made from ``snapshot`` by :meth:`plan`): in a dry run, report;
        when enforcing, take or check the lock and act race-safely. Audits every outcome.

        Raises:
            PermissionMissing: see :meth:`check_permissions`.
            psycopg.OperationalError: the connection was lost.
        """
        if started is None:
            started = time.perf_counter()
        warnings = self.check_permissions(snapshot)
        conn = self.connect()
        guard_pid = conn.info.backend_pid
        leader: bool = True
        leader_pid: int | None = guard_pid
        try:
            if self.enforce and self.leader_lock:
                leader, leader_pid = self._try_lead(conn)
            outcomes: list[Outcome] = []
            for a in plan.actions:
                if not self.enforce:
                    # not counted against max_per_minute: nothing happened
                    outcomes.append(self._outcome(a, f"would_{a.kind}", None, a.reason))
                elif not leader:
                    who = f"guard backend {leader_pid}" if leader_pid else "another guard"
                    outcomes.append(self._outcome(
                        a, "skipped", "standby", f"standby: {who} holds the lock and acts"))
                else:
                    # write-ahead: the record goes out (or AuditError stops us) before the act
                    intent = "terminating" if a.kind == "terminate" else "cancelling"
                    self.audit.write(_record(self._outcome(a, intent, None, a.reason),
                                             dry_run=False, usage=plan.usage, guard=guard_pid))
                    outcomes.append(self._execute(conn, a))
            outcomes.extend(self._skip_outcome(s) for s in plan.skipped)
        except psycopg.OperationalError:
            self._lost()
            raise
        result = PassResult(
            enforce=self.enforce,
            leader=leader,
            leader_pid=leader_pid,
            guard_pid=guard_pid,
            plan=plan,
            outcomes=tuple(outcomes),
            snapshot=snapshot,
            snapshot_duration=snapshot.duration,
            policy_duration=policy_duration,
            duration=time.perf_counter() - started,
            warnings=tuple(warnings),
        )
        for o in outcomes:
            if o.skip != "standby":
                self.audit.write(_record(o, result))
            self.metrics.record_outcome(rule=o.rule, application=o.session.application,
                                        action=o.action, outcome=o.outcome, skip=o.skip)
        self.metrics.record_pass(
            duration=result.duration,
            snapshot_duration=result.snapshot_duration,
            policy_duration=policy_duration,
            usage=plan.usage,
            used_slots=plan.used_slots,
            usable_slots=plan.usable_slots,
            candidates=plan.candidates,
            emergency=plan.emergency,
            leader=leader,
        )
        done = len(result.terminated_pids) + len(result.cancelled_pids)
        if done or result.failed:
            logger.info("guard pass: %d acted, %d failed, usage %.2f", done, len(result.failed),
                        plan.usage)
        return result

    @staticmethod
    def _outcome(a: Action, outcome: str, skip: str | None, reason: str) -> Outcome:
        return Outcome(now_iso(), a.rule, a.kind, outcome, skip, reason, a.session)

    @staticmethod
    def _skip_outcome(s: Skip) -> Outcome:
        return Outcome(now_iso(), s.rule, s.kind, "skipped", s.code, s.reason, s.session)

    def _execute(self, conn: psycopg.Connection[Any], a: Action) -> Outcome:
        try:
            hit = signal_backend(conn, a.kind, a.session)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            logger.warning("guard could not %s backend %s: %s", a.kind, a.pid, server_message(exc))
            return self._outcome(a, "failed", None, f"{server_message(exc)} ({a.reason})")
        if hit.hit:
            self._recent.append(time.monotonic())
            done = "terminated" if a.kind == "terminate" else "cancelled"
            logger.info("guard %s backend %s (%s, rule %s): %s", done, a.pid, a.session.label,
                        a.rule, a.reason)
            return self._outcome(a, done, None, a.reason)
        return self._outcome(a, "skipped", hit.skip, f"{hit.why}; not touched ({a.reason})")


@dataclass(frozen=True, slots=True)
class Signalled:
    """What :func:`signal_backend` did.

    Attributes:
        hit: the backend was signalled.
        skip: when not hit: ``gone``, ``pid_reused`` or ``state_changed``.
        why: when not hit, for humans (``session is now 'active', was 'idle'``).
    """

    hit: bool
    skip: str | None = None
    why: str = ""


def signal_backend(conn: psycopg.Connection[Any], kind: str, session: Session) -> Signalled:
    """Terminate (``kind="terminate"``) or cancel (``"cancel"``) ``session``'s backend, race-safe:
    only if the pid still belongs to the same session in the same state as ``session`` says
    (``do_terminate.sql`` / ``do_cancel.sql``: pid + ``backend_start`` + ``state`` +
    ``state_change``). The guard and ``pgwarden top`` act through here; protection
    (:func:`pgwarden.guard.policy.protected`) is the caller's to check first.

    Raises:
        psycopg.Error: the server refused (permission: the role lacks ``pg_signal_backend``, or
            the backend is a superuser's) or the connection was lost.
    """
    version = conn.info.server_version
    name = "do_terminate" if kind == "terminate" else "do_cancel"
    params = {
        "pid": session.pid,
        "backend_start": session.backend_start,
        "state": session.state,
        "state_change": session.state_change,
    }
    row = conn.cursor(row_factory=dict_row).execute(_q(name, version), params).fetchone()
    if row and row["hit"]:
        return Signalled(True)
    row = conn.cursor(row_factory=dict_row).execute(
        _q("get_guard_target", version), {"pid": session.pid}).fetchone()
    if row is None:
        return Signalled(False, "gone", "session ended before it was acted on")
    backend_start, state = row["backend_start"], row["state"]
    state_change, backend_type = row["state_change"], row["backend_type"]
    if backend_start != session.backend_start or backend_type != "client backend":
        return Signalled(False, "pid_reused", "pid now belongs to a different session")
    if state != session.state:
        return Signalled(False, "state_changed", f"session is now {state!r}, was {session.state!r}")
    if state_change != session.state_change:
        return Signalled(False, "state_changed",
                         f"session was used since it was chosen (still {state!r})")
    return Signalled(False, "state_changed", "session changed while being acted on")
