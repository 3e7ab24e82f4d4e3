"""Holders: who has a pool connection checked out.

At checkout a pool records a *cheap* trace of the caller: a tuple of ``(code object, bytecode
offset)`` pairs taken by walking ``sys._getframe()`` (no source lines read, no strings built, no
frame objects kept alive; HikariCP's ``ProxyLeakTask`` does the same with a ``Throwable``), and
the caller's thread object or task name. They are turned into file/line/function text only when
reported: by ``holders()``, a leak warning, or an exhaustion error.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any

__all__ = [
    "STACK_DEPTH",
    "Holder",
    "RawStack",
    "capture_stack",
    "format_location",
    "holder_name",
    "innermost",
    "summarize",
]

#: A captured stack: innermost first, ``(code, f_lasti)`` pairs (the bytecode offset; turned
#: into a line number only when reported, which saves decoding the line table per checkout).
#: A tuple, or the list a pool built it in (never changed afterwards: no copy per checkout).
RawStack = Sequence[tuple[CodeType, int]]

#: Frames kept per checkout (innermost first).
STACK_DEPTH = 8

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB = os.path.dirname(os.path.abspath(traceback.__file__))
#: Frames that are never "the code holding the connection": pgwarden's own (pool, integrations,
#: tracker), contextlib and asyncio's plumbing, and the pooled libraries (whose frames sit between
#: the application and the checkout).
_SKIP_FILES: tuple[str, ...] = (
    *(os.path.join(_PKG_DIR, d) + os.sep for d in ("pool", "observe", "integrations")),
    os.path.join(_STDLIB, "contextlib.py"),
    os.path.join(_STDLIB, "asyncio") + os.sep,
    os.path.join(_STDLIB, "concurrent") + os.sep,
    os.path.join(_STDLIB, "threading.py"),
)
_skip_files = [_SKIP_FILES]


def skip_files(*prefixes: str) -> None:
    """Also leave out frames from files under these path prefixes (a pooled library's own
    package directory) when locating the holder."""
    _skip_files[0] = tuple(dict.fromkeys((*_skip_files[0], *prefixes)))


def holder_name(holder: Any) -> str:
    """A task name as is; a :class:`threading.Thread` as its name (kept after it finished); a
    bare thread ident as the thread's name, or ``thread <ident>`` if it is gone."""
    if isinstance(holder, str):
        return holder
    if isinstance(holder, threading.Thread):
        return holder.name
    t = threading._active.get(holder)  # type: ignore[attr-defined]
    return t.name if t is not None else f"thread {holder}"


def capture_stack(skip: int = 2, depth: int = STACK_DEPTH) -> RawStack:
    """Return ``depth`` frames above the caller as ``(code, f_lasti)`` pairs (about 0.5 µs)."""
    try:
        f = sys._getframe(skip)
    except ValueError:
        return ()
    out = []
    while f is not None and depth:
        out.append((f.f_code, f.f_lasti))
        f = f.f_back  # type: ignore[assignment]
        depth -= 1
    return tuple(out)


def _lineno(code: CodeType, lasti: int) -> int:
    line = code.co_firstlineno
    for start, end, lineno in code.co_lines():
        if start <= lasti < end:
            return lineno if lineno is not None else line
        if lineno is not None:
            line = lineno
    return line


def _user_frames(raw: RawStack) -> list[tuple[CodeType, int]]:
    skip = _skip_files[0]
    frames = [(c, _lineno(c, i)) for c, i in raw if not c.co_filename.startswith(skip)]
    return frames or [(c, _lineno(c, i)) for c, i in raw]


def summarize(raw: RawStack) -> traceback.StackSummary:
    """Format a captured stack, outermost first (as ``traceback`` prints), library frames
    dropped."""
    frames = [
        traceback.FrameSummary(c.co_filename, n, c.co_name, lookup_line=False)
        for c, n in reversed(_user_frames(raw))
    ]
    return traceback.StackSummary.from_list(frames)


def _short_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def innermost(raw: RawStack) -> tuple[str, int, str] | None:
    """``(file, line, function)`` of the innermost application frame, or ``None``."""
    frames = _user_frames(raw)
    if not frames:
        return None
    code, lineno = frames[0]
    return _short_path(code.co_filename), lineno, code.co_name


def format_location(raw: RawStack) -> str:
    """``path:line in function`` of the innermost application frame, or ``"?"``."""
    where = innermost(raw)
    return "?" if where is None else f"{where[0]}:{where[1]} in {where[2]}"


@dataclass(frozen=True, slots=True)
class Holder:
    """One checked-out connection and the code holding it (a snapshot).

    Attributes:
        pool: name of the pool.
        pid: backend pid of the connection (``pg_stat_activity.pid``), 0 where unknown.
        holder: name of the thread (kept after it finished) or asyncio task that checked it out.
        started_at: wall-clock time of the checkout (``time.time()`` seconds).
        held_for: seconds the connection had been checked out when the snapshot was taken.
        transaction_state: ``idle``, ``active``, ``idle in transaction``,
            ``idle in transaction (aborted)``, ``broken`` or ``unknown`` (as
            ``pg_stat_activity.state``, where the library tells).
        file: file of the innermost application frame at checkout (relative to the working
            directory where it is below it), ``"?"`` where unknown.
        line: its line number (0 where unknown).
        function: its function name.
        stack: the checkout stack (outermost first, library frames dropped); empty when the pool
            runs with ``leak_threshold=None``.
        leaked: ``True`` once the checkout was reported as a leak (held > ``leak_threshold``).
        library: the pool's library (``pgwarden``, ``sqlalchemy``, ``psycopg_pool``,
            ``asyncpg``, ``psycopg2``).
    """

    pool: str
    pid: int
    holder: str
    started_at: float
    held_for: float
    transaction_state: str
    file: str
    line: int
    function: str
    stack: traceback.StackSummary
    leaked: bool = False
    library: str = "pgwarden"

    @property
    def location(self) -> str:
        """``path:line in function``, or ``"?"``."""
        return "?" if self.file == "?" else f"{self.file}:{self.line} in {self.function}"

    def describe(self) -> str:
        """One line: ``backend pid 4711 held 95.2 s by worker-3 at app/jobs.py:88 in f (idle)``."""
        pid = f"backend pid {self.pid}" if self.pid else "backend pid ?"
        return (f"{pid} held {self.held_for:.1f} s by {self.holder} at {self.location} "
                f"({self.transaction_state})")

    def format_stack(self) -> str:
        """The checkout stack as ``traceback`` prints it."""
        return "".join(self.stack.format())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; code locations only (never queries, parameters or connection strings)."""
        return {
            "pool": self.pool,
            "library": self.library,
            "pid": self.pid,
            "holder": self.holder,
            "started_at": round(self.started_at, 3),
            "held_seconds": round(self.held_for, 3),
            "transaction_state": self.transaction_state,
            "file": self.file,
            "line": self.line,
            "function": self.function,
            "leaked": self.leaked,
            "stack": [f"{_short_path(f.filename)}:{f.lineno} in {f.name}" for f in self.stack],
        }
