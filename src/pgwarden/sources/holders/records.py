"""Holders as applications report them (``/holders``, :mod:`pgwarden.metrics.holders`), and
what one ``--holders`` URL answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FORMAT", "AppHolder", "HolderSource", "fmt_age"]

#: The ``format`` key of an application's holders document (``/holders``).
FORMAT = "pgwarden-holders/1"


def fmt_age(seconds: float | None) -> str:
    """``42 s``, ``9 min``, ``2.5 h`` (``?`` for none)."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True, slots=True)
class AppHolder:
    """One checked-out connection, as the application holding it reported it.

    Made by :func:`~.fetch.parse_document`, which checks and cleans each one once: every text
    is printable (control characters, newlines and escape codes become ``?``) and bounded
    (``TEXT_CHARS``, ``PATH_CHARS``; ``STACK_ENTRIES``), pids and lines are whole numbers from
    0 to 2**31 - 1, ``held_seconds`` and ``started_at`` finite and in range; an entry that is
    not is left out. Renderers print the fields as they are.

    Attributes:
        pid: the connection's backend pid (``pg_stat_activity.pid``), recorded by the pool's
            tracker when the connection was opened.
        pool: the pool's name.
        library: the pool's library (``pgwarden``, ``sqlalchemy``, ``psycopg_pool``,
            ``asyncpg``, ``psycopg2``).
        holder: the thread or asyncio task that checked it out.
        file, line, function: the innermost application frame of the checkout (``"?"``, 0,
            ``"?"`` when the pool records no stacks: ``leak_threshold=None``).
        held_seconds: seconds it had been checked out when the application answered.
        started_at: Unix time of the checkout (the application's clock).
        transaction_state: as the application's driver saw it (``idle``, ``idle in
            transaction``, ``active``, ``broken``, ``unknown``).
        leaked: reported as a leak (held past the pool's ``leak_threshold``).
        stack: the checkout stack, outermost first (``file:line in function`` each).
        process_pid: the application's process.
        source: the URL it came from (without credentials or query).
    """

    pid: int
    pool: str
    library: str
    holder: str
    file: str
    line: int
    function: str
    held_seconds: float
    started_at: float
    transaction_state: str
    leaked: bool
    stack: tuple[str, ...]
    process_pid: int
    source: str

    @property
    def location(self) -> str:
        """``file:line in function``, or ``"?"``."""
        return "?" if self.file == "?" else f"{self.file}:{self.line} in {self.function}"

    @property
    def short(self) -> str:
        """One cell for ``top``: ``api: app/jobs.py:88 in sync_orders by worker-3, 9 min``."""
        where = f" {self.location}" if self.file != "?" else ""
        return f"{self.pool}:{where} by {self.holder}, {fmt_age(self.held_seconds)}"

    def describe(self) -> str:
        """One line without the server's view: ``pid 4711 (api) checked out at
        app/jobs.py:88 in sync_orders by worker-3, held 9 min (idle in transaction, as the
        application sees it)``."""
        where = f" at {self.location}" if self.file != "?" else ""
        leak = ", reported as a leak" if self.leaked else ""
        return (f"pid {self.pid} ({self.pool}) checked out{where} by {self.holder}, held "
                f"{fmt_age(self.held_seconds)} ({self.transaction_state}, as the application "
                f"sees it{leak})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the application's holder object, plus where it came from)."""
        return {
            "pid": self.pid,
            "pool": self.pool,
            "library": self.library,
            "holder": self.holder,
            "file": self.file,
            "line": self.line,
            "function": self.function,
            "location": self.location,
            "held_seconds": round(self.held_seconds, 3),
            "started_at": self.started_at,
            "transaction_state": self.transaction_state,
            "leaked": self.leaked,
            "stack": list(self.stack),
            "process_pid": self.process_pid,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class HolderSource:
    """What one ``--holders`` URL answered.

    Attributes:
        url: the URL as shown (no credentials, no query string).
        holders: its holders (empty when it failed).
        error: why it gave none (``connection refused``, ``no answer within 2 s``, ``HTTP
            404``, ``not JSON``...), or ``None``.
        process_pid: the application process that answered.
        taken_at: Unix time the application took them (its clock).
        skipped: holder entries left out because they were malformed.
    """

    url: str
    holders: tuple[AppHolder, ...] = ()
    error: str | None = None
    process_pid: int | None = None
    taken_at: float | None = None
    skipped: int = 0

    @property
    def warning(self) -> str | None:
        """One line for the report, or ``None`` when it answered."""
        if self.error is not None:
            return f"--holders {self.url}: {self.error}; its holders are not shown"
        if self.skipped:
            return f"--holders {self.url}: {self.skipped} malformed holder entries left out"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.error is None, "error": self.error,
                "process_pid": self.process_pid, "taken_at": self.taken_at,
                "holders": len(self.holders), "skipped": self.skipped}
