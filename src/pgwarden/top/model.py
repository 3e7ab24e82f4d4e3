"""``pgwarden top``'s pure parts: what a frame shows, in which order, and what may be acted on.

No I/O and no UI here: :func:`build_frame` turns one
:class:`~pgwarden.sources.postgres.Snapshot` and a :class:`View` (sort key, filters, hide idle)
into a :class:`Frame` of :class:`Row` records; :func:`may_act` says why a session must not be
cancelled or terminated (the guard's :func:`~pgwarden.guard.policy.protected`), or ``None``.
The terminal UI (:mod:`.app`) and ``--once`` (:mod:`.render`) only draw frames.

Ages are seconds (floats) at the snapshot's instant, ``None`` where they do not apply or the
role may not see them.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..guard.policy import Protection, protected
from ..sources.holders import HolderJoin
from ..sources.postgres.records import IDLE, Session, Snapshot, hidden_hint

__all__ = [
    "FILTER_FIELDS",
    "SORT_KEYS",
    "STATE_ORDER",
    "Frame",
    "Row",
    "View",
    "build_frame",
    "may_act",
]

#: Sort keys (``--sort`` and the ``s`` key cycle through them in this order) and what they sort by.
SORT_KEYS: dict[str, Callable[[Row], Any]] = {
    "state_age": lambda r: r.state_age,
    "xact_age": lambda r: r.xact_age,
    "query_age": lambda r: r.query_age,
    "backend_age": lambda r: r.backend_age,
    "pid": lambda r: r.pid,
    "application": lambda r: r.application,
    "user": lambda r: r.user,
    "database": lambda r: r.database,
    "state": lambda r: r.state,
}
#: What the filters match: a glob pattern (``web-*``) or, without wildcards, a substring.
FILTER_FIELDS = ("application", "user", "database", "state")
#: States in the usage bar, in this order (others follow by name).
STATE_ORDER = ("active", "idle in transaction", "idle in transaction (aborted)", "idle",
               "fastpath function call", "disabled", "(hidden)")


@dataclass(frozen=True, slots=True)
class View:
    """What the user chose to see.

    Attributes:
        sort: a key of :data:`SORT_KEYS` (default ``state_age``: longest in its state first).
        descending: largest first (rows without a value always come last).
        application, user, database, state: filters (glob with ``*?[``, else substring); empty
            means all.
        hide_idle: leave ``idle`` sessions out.

    Raises:
        ValueError: an unknown sort key.
    """

    sort: str = "state_age"
    descending: bool = True
    application: str = ""
    user: str = ""
    database: str = ""
    state: str = ""
    hide_idle: bool = False

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {self.sort!r}; one of {', '.join(SORT_KEYS)}")

    def next_sort(self) -> View:
        """The view sorted by the next key of :data:`SORT_KEYS`."""
        keys = list(SORT_KEYS)
        return replace(self, sort=keys[(keys.index(self.sort) + 1) % len(keys)])

    def with_filter(self, name: str, text: str) -> View:
        """The view with filter ``name`` (one of :data:`FILTER_FIELDS`) set to ``text``."""
        if name not in FILTER_FIELDS:
            raise ValueError(f"unknown filter {name!r}; one of {', '.join(FILTER_FIELDS)}")
        changes: dict[str, Any] = {name: text.strip()}
        return replace(self, **changes)

    @property
    def filters(self) -> dict[str, str]:
        """The filters that are set."""
        return {n: getattr(self, n) for n in FILTER_FIELDS if getattr(self, n)}


@dataclass(frozen=True, slots=True)
class Row:
    """One session as ``top`` shows it.

    Attributes:
        client: ``addr:port``, ``local`` (Unix socket) or ``None`` (hidden).
        state: the session's state, ``(hidden)`` when the role may not see it.
        wait: ``wait_event_type:wait_event`` or ``""``.
        blocked_by: pids of the sessions blocking this one (lock waits).
        holder: the application code holding the connection (``--holders``): ``pool: file:line
            in function by thread-or-task, held for``; empty when no application reports it.
        session: the session as the snapshot saw it (what cancel / terminate match).
    """

    pid: int
    application: str
    user: str
    database: str
    client: str | None
    state: str
    state_age: float | None
    xact_age: float | None
    query_age: float | None
    backend_age: float | None
    wait: str
    blocked_by: tuple[int, ...]
    query: str
    session: Session
    holder: str = ""


@dataclass(frozen=True, slots=True)
class Frame:
    """One screen of ``top``.

    Attributes:
        taken_at: the server's clock at the snapshot.
        version: the server's version string.
        role: the role ``top`` is connected as.
        used_slots, usable_slots, usage: as :class:`~pgwarden.sources.postgres.Snapshot`'s.
        by_state: client backends by state, in :data:`STATE_ORDER`.
        hidden: client backends whose state the role may not see.
        hint: what to do about them (``GRANT pg_monitor TO role;``), or ``""``.
        rows: the sessions shown (filtered, sorted).
        total: client backends before filtering.
        view: the view that made this frame.
        notes: lines about the holders (``--holders``): what was joined, URLs that failed.
    """

    taken_at: dt.datetime
    version: str
    role: str
    used_slots: int
    usable_slots: int
    usage: float
    by_state: tuple[tuple[str, int], ...]
    hidden: int
    hint: str
    rows: tuple[Row, ...]
    total: int
    view: View = field(default_factory=View)
    notes: tuple[str, ...] = ()


def _state(s: Session) -> str:
    return s.state or "" if s.visible else "(hidden)"


def _row(s: Session, holders: HolderJoin | None = None) -> Row:
    if s.client_addr is not None:
        client: str | None = f"{s.client_addr}:{s.client_port}" if s.client_port else s.client_addr
    else:
        client = "local" if s.visible else None
    wait = f"{s.wait_event_type}:{s.wait_event}" if s.wait_event_type else ""
    return Row(
        pid=s.pid, application=s.application, user=s.user or "", database=s.database or "",
        client=client, state=_state(s), state_age=s.state_age, xact_age=s.xact_age,
        query_age=s.query_age, backend_age=s.backend_age, wait=wait,
        blocked_by=s.blocking_pids, query=" ".join((s.query or "").split()), session=s,
        holder=_holder(s.pid, holders),
    )


def _holder(pid: int, holders: HolderJoin | None) -> str:
    held = holders.of(pid) if holders is not None else None
    if held is None:
        return ""
    more = f" (+{len(held.holders) - 1})" if len(held.holders) > 1 else ""
    return held.holder.short + more


def _matches(pattern: str, value: str) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(value, pattern)
    return pattern in value


def _state_rank(state: str) -> tuple[int, str]:
    return (STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER), state)


def build_frame(snap: Snapshot, view: View | None = None,
                holders: HolderJoin | None = None) -> Frame:
    """The frame for ``snap`` as ``view`` asks: client backends only (pgwarden's own session
    left out by the snapshot), filtered, sorted; rows without a value for the sort key last.
    ``holders`` (the applications' holders joined to ``snap``) fills the holder column."""
    view = view or View()
    clients = snap.client_backends
    rows = [_row(s, holders) for s in clients]
    shown = [r for r in rows
             if not (view.hide_idle and r.state == IDLE)
             and all(_matches(getattr(view, n), getattr(r, n)) for n in FILTER_FIELDS)]
    key = SORT_KEYS[view.sort]
    present = [r for r in shown if key(r) is not None]
    present.sort(key=lambda r: (key(r), r.pid), reverse=view.descending)
    present.extend(r for r in shown if key(r) is None)
    counts = Counter(r.state for r in rows)
    hidden = snap.hidden_sessions
    hint = hidden_hint(hidden, snap.server)
    return Frame(
        taken_at=snap.taken_at, version=snap.server.version, role=snap.server.role,
        used_slots=snap.used_slots, usable_slots=snap.usable_slots, usage=snap.usage,
        by_state=tuple(sorted(counts.items(), key=lambda kv: _state_rank(kv[0]))),
        hidden=hidden, hint=hint, rows=tuple(present), total=len(rows), view=view,
        notes=(("holders: " + holders.summary(), *holders.warnings) if holders is not None
               else ()),
    )


def may_act(row: Row, snap: Snapshot, protection: Protection | None = None) -> str | None:
    """Why ``row``'s session must not be cancelled or terminated from ``top``, or ``None``.

    The guard's protections (:func:`~pgwarden.guard.policy.protected`, default
    :class:`~pgwarden.guard.policy.Protection`): never pgwarden's own sessions, never hidden
    sessions or other than client backends, never superusers unless allowed, never replication
    roles or the protected applications (``psql``, ``pg_dump*``...).
    """
    return protected(row.session, snap, protection or Protection())
