"""The guard's audit log: one JSON object per line for every decision.

Each record (:class:`AuditRecord`) says what the guard would do, did, skipped or failed to do
about one session, and why. When the guard enforces, every action is announced by a line of its
own (``terminating`` / ``cancelling``) that is written and flushed before the statement is sent;
if any destination cannot be written, :class:`~pgwarden.errors.AuditError` stops the guard
before it acts. Keys (all present in every line; ``null`` where unknown):

==================  ===========================================================================
``time``            when the decision was carried out, ISO 8601 UTC (``2026-11-20T23:14:21.123Z``)
``dry_run``         true unless the guard enforces
``action``          ``terminate`` or ``cancel`` (what the rule asks for)
``outcome``         ``would_terminate`` / ``would_cancel`` (dry run), ``terminating`` /
                    ``cancelling`` (written and flushed *before* the statement is sent: the
                    guard never acts without a record), then ``terminated`` / ``cancelled``
                    (done), ``skipped`` (see ``skip``), ``failed`` (see ``reason``)
``skip``            why skipped: ``protected``, ``limit_per_pass``, ``limit_per_minute``,
                    ``standby`` (another guard acts), ``gone``, ``pid_reused``, ``state_changed``
``reason``          for humans: the rule's reason, the protection, the race, the error
``rule``            the rule's name, or ``emergency``
``pid``             backend pid
``user``, ``database``, ``application``, ``client_addr``, ``state``
``backend_start``   ISO 8601, identifies the session together with ``pid``
``idle_age``        seconds idle (sessions ``idle`` or ``idle in transaction``)
``xact_age``        seconds since the transaction began
``query_age``       seconds since the query began
``usage``           usage of usable slots when the snapshot was taken
``guard``           this guard's backend pid
==================  ===========================================================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from ..errors import AuditError

__all__ = ["AuditLog", "AuditRecord"]


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log (see the module docstring for the keys)."""

    time: str
    dry_run: bool
    action: str
    outcome: str
    skip: str | None
    reason: str
    rule: str
    pid: int
    user: str | None
    database: str | None
    application: str
    client_addr: str | None
    state: str | None
    backend_start: str | None
    idle_age: float | None
    xact_age: float | None
    query_age: float | None
    usage: float
    guard: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


class AuditLog:
    """Writes :class:`AuditRecord` lines to files and/or stdout; thread-safe.

    Args:
        destinations: file paths (appended to, created with mode 0600 where new), ``-`` for
            stdout, or open text streams (not closed here).

    Raises:
        AuditError: a destination is empty, a directory, in a directory that does not exist,
            or cannot be opened (at construction).
    """

    def __init__(self, destinations: Iterable[str | TextIO] = ()) -> None:
        self._lock = threading.Lock()
        self._streams: list[TextIO] = []
        self._owned: list[TextIO] = []
        self.paths: list[str] = []
        for dest in destinations:
            if isinstance(dest, str):
                if dest == "-":
                    self._streams.append(sys.stdout)
                    self.paths.append("-")
                    continue
                try:
                    if not dest.strip():
                        raise IsADirectoryError(0, "an empty path: give a file or '-' (stdout)")
                    fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                except OSError as exc:
                    self.close()
                    raise AuditError(f"cannot open the audit log {dest!r}: "
                                     f"{exc.strerror or exc}", destination=dest) from None
                stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
                self._streams.append(stream)
                self._owned.append(stream)
                self.paths.append(dest)
            else:
                self._streams.append(dest)
                self.paths.append(getattr(dest, "name", "<stream>"))

    def write(self, record: AuditRecord) -> None:
        """Append one line to every destination and flush it.

        Raises:
            AuditError: a destination cannot be written (a closed pipe, a full disk, a file
                closed under it); the guard stops rather than act without a record.
        """
        line = record.to_json() + "\n"
        with self._lock:
            for stream, path in zip(self._streams, self.paths, strict=True):
                try:
                    stream.write(line)
                    stream.flush()
                except (OSError, ValueError) as exc:
                    what = "stdout" if path == "-" else repr(path)
                    reason = getattr(exc, "strerror", None) or str(exc)
                    raise AuditError(f"cannot write the audit log {what}: {reason}; the guard "
                                     "stopped rather than act without an audit record",
                                     destination=path) from None

    def close(self) -> None:
        with self._lock:
            for stream in self._owned:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
            self._owned.clear()
            self._streams.clear()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_iso() -> str:
    """Now, as the audit log's ``time`` (ISO 8601 UTC, milliseconds, ``Z``)."""
    return _iso(dt.datetime.now(dt.timezone.utc)) or ""


#: A datetime as the audit log writes it (ISO 8601 UTC, milliseconds, ``Z``); None stays None.
iso = _iso
