"""Which application code holds which server session: applications' holders joined to
``pg_stat_activity`` by backend pid. Pure: no I/O.

A pool's tracker records each connection's backend pid when it opens it, so a holder's ``pid``
is ``pg_stat_activity.pid``. Through PgBouncer it is not: libpq then gets PgBouncer's own
key, and those holders have no session on the server ("unmatched"). A pid can only be one
session of one server; when several applications claim one (they talk to different servers
whose pids happen to be equal), every claim is kept, longest held first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..postgres.records import Session
from .records import AppHolder, HolderSource, fmt_age

__all__ = ["HeldSession", "HolderJoin", "join"]


@dataclass(frozen=True, slots=True)
class HeldSession:
    """One server session and the application code holding it.

    Attributes:
        pid: the backend pid.
        application: its ``application_name``.
        state: its state (``None`` when the role may not see it).
        state_age: seconds in that state at the snapshot (``None`` when unknown).
        holders: who holds it, longest held first (more than one: several applications
            claim this pid).
    """

    pid: int
    application: str
    state: str | None
    state_age: float | None
    holders: tuple[AppHolder, ...]

    @property
    def holder(self) -> AppHolder:
        """The (longest held) holder."""
        return self.holders[0]

    def describe(self) -> str:
        """``pid 4711 (api) idle in transaction 9 min, checked out at app/jobs.py:88 in
        sync_orders by worker-3, held 9 min`` (``(api)``: the pool)."""
        h = self.holder
        state = self.state if self.state is not None else "state hidden"
        age = f" {fmt_age(self.state_age)}" if self.state_age is not None else ""
        where = f" at {h.location}" if h.file != "?" else ""
        text = (f"pid {self.pid} ({h.pool}) {state}{age}, checked out{where} by {h.holder}, "
                f"held {fmt_age(h.held_seconds)}")
        if h.leaked:
            text += " (reported as a leak)"
        if len(self.holders) > 1:
            text += f" (+{len(self.holders) - 1} other claims on this pid: another server?)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "application": self.application, "state": self.state,
                "state_seconds": round(self.state_age, 1) if self.state_age is not None
                else None,
                "holders": [h.as_dict() for h in self.holders], "text": self.describe()}


@dataclass(frozen=True, slots=True)
class HolderJoin:
    """Applications' holders joined to one snapshot's sessions.

    Attributes:
        sources: what each ``--holders`` URL answered, in the order given.
        sessions: backend pid -> the session and its holders (sessions with a holder only).
        unmatched: holders whose pid is no session of this server (another server, a session
            that ended since, or a connection through PgBouncer).
    """

    sources: tuple[HolderSource, ...]
    sessions: Mapping[int, HeldSession] = field(default_factory=dict)
    unmatched: tuple[AppHolder, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line per URL that gave no holders (or malformed ones)."""
        return tuple(w for s in self.sources if (w := s.warning) is not None)

    @property
    def holders(self) -> int:
        """Holders the applications reported, joined or not."""
        return sum(len(s.holders) for s in self.sources)

    def of(self, pid: int) -> HeldSession | None:
        """The session ``pid`` with its holders, or ``None``."""
        return self.sessions.get(pid)

    def for_pids(self, pids: Iterable[int]) -> list[HeldSession]:
        """The held sessions among ``pids``, in their order."""
        return [h for p in pids if (h := self.sessions.get(p)) is not None]

    def longest_held(self) -> list[HeldSession]:
        """Every held session, longest held first."""
        return sorted(self.sessions.values(), key=lambda s: (-s.holder.held_seconds, s.pid))

    def summary(self) -> str:
        """``3 checked-out connections reported by 2 of 2 --holders URLs; 3 held sessions on
        this server``, and how many did not join."""
        ok = sum(1 for s in self.sources if s.error is None)
        text = (f"{_n(self.holders, 'checked-out connection')} reported by {ok} of "
                f"{_n(len(self.sources), '--holders URL')}; "
                f"{_n(len(self.sessions), 'held session')} on this server")
        if self.unmatched:
            text += (f"; {len(self.unmatched)} with a pid that is no session here (another "
                     "server, ended since, or through PgBouncer)")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": [s.as_dict() for s in self.sources],
            "sessions": [s.as_dict() for s in self.longest_held()],
            "unmatched": [h.as_dict() for h in self.unmatched],
            "warnings": list(self.warnings),
        }


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def join(sessions: Iterable[Session], sources: Sequence[HolderSource]) -> HolderJoin:
    """Join ``sources``' holders to ``sessions`` (a snapshot's) by backend pid."""
    by_pid = {s.pid: s for s in sessions}
    claims: dict[int, list[AppHolder]] = {}
    unmatched: list[AppHolder] = []
    for src in sources:
        for h in src.holders:
            if h.pid in by_pid:
                claims.setdefault(h.pid, []).append(h)
            else:
                unmatched.append(h)
    held = {}
    for pid, hs in claims.items():
        s = by_pid[pid]
        hs.sort(key=lambda h: -h.held_seconds)
        held[pid] = HeldSession(pid=pid, application=s.application,
                                state=s.state if s.visible else None,
                                state_age=s.state_age, holders=tuple(hs))
    return HolderJoin(tuple(sources), held, tuple(unmatched))
