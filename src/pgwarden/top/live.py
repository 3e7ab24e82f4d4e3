"""``pgwarden top``'s I/O: one long-lived connection (``application_name=pgwarden-top``),
snapshots, and cancel / terminate through the guard's race-safe statements after the guard's
protections."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from ..conninfo import Target, connect
from ..diagnose import server_message
from ..guard.policy import Protection
from ..guard.runner import signal_backend
from ..sources import holders as holders_source
from ..sources import postgres
from ..sources.postgres.records import Snapshot
from .model import Frame, Row, View, build_frame, may_act

__all__ = ["Acted", "Source"]

logger = logging.getLogger("pgwarden.top")

Kind = Literal["cancel", "terminate"]


@dataclass(frozen=True, slots=True)
class Acted:
    """What cancel / terminate did to one session.

    Attributes:
        done: the backend was signalled.
        message: one line for the user (what was done, or why not).
    """

    done: bool
    message: str


class Source:
    """Frames of one server for ``top``.

    Args:
        target: where to connect (resolved with ``command="top"``).
        protection: what must never be cancelled or terminated (default: the guard's
            :class:`~pgwarden.guard.policy.Protection`).
        query_chars: how much of each query to read.
        holders: applications' ``/holders`` URLs, fetched with each snapshot and joined to it
            by backend pid (the holder column); a URL that fails is a note, never an error.
        holders_timeout: seconds to wait for them (all at once, while the snapshot is
            taken: a refresh waits at most this long for a slow URL).
    """

    def __init__(self, target: Target, *, protection: Protection | None = None,
                 query_chars: int = 500, holders: Sequence[str] = (),
                 holders_timeout: float = holders_source.DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.protection = protection or Protection()
        self.query_chars = query_chars
        self.holder_urls = tuple(holders)
        self.holders_timeout = holders_timeout
        self.snapshot: Snapshot | None = None
        self.holders: holders_source.HolderJoin | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            conn = self._conn = connect(self.target)
        return conn

    def take(self) -> Snapshot:
        """A new snapshot (reconnecting first if the connection was lost).

        Raises:
            ConnectError: cannot connect.
            psycopg.Error: the connection was lost during the snapshot (the next call
                reconnects).
        """
        # the holders are fetched while the snapshot is taken: a refresh waits for the slower
        # of the two (a slow URL at most holders_timeout), not for both in turn
        pending = (holders_source.start_fetch_all(self.holder_urls,
                                                  timeout=self.holders_timeout)
                   if self.holder_urls else None)
        conn = self._connection()
        try:
            snap = postgres.take(conn, query_chars=self.query_chars)
        except psycopg.Error:
            self.close()
            raise
        if pending is not None:
            self.holders = holders_source.join(snap.client_backends, pending.result())
        self.snapshot = snap
        return snap

    def frame(self, view: View | None = None) -> Frame:
        """The frame of the last snapshot (taking one if there is none)."""
        snap = self.snapshot if self.snapshot is not None else self.take()
        return build_frame(snap, view, self.holders)

    def act(self, row: Row, kind: Kind) -> Acted:
        """Cancel or terminate ``row``'s session, if the guard's protections allow it and it is
        still the same session in the same state as shown. Never raises for a refusal.

        Raises:
            ConnectError: cannot reconnect.
        """
        assert self.snapshot is not None, "act() needs a frame first"
        why = may_act(row, self.snapshot, self.protection)
        if why is not None:
            return Acted(False, f"refused: pid {row.pid} is protected ({why})")
        try:
            hit = signal_backend(self._connection(), kind, row.session)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and (
                    self._conn is None or self._conn.broken):
                self.close()
            return Acted(False, f"could not {kind} pid {row.pid}: {server_message(exc)}")
        if hit.hit:
            done = "terminated" if kind == "terminate" else "cancelled the query of"
            logger.info("top: %s backend %s (%s)", done, row.pid, row.session.label)
            return Acted(True, f"{done} pid {row.pid} ({row.application or '(none)'})")
        return Acted(False, f"not touched: pid {row.pid}: {hit.why}")

    def close(self) -> None:
        """Close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("closing top's connection failed", exc_info=True)
