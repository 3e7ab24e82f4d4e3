"""Holders: who has a pool connection checked out.

At checkout the pool records a *cheap* trace of the caller: a tuple of ``(code object, line
number)`` pairs taken by walking ``sys._getframe()`` (no source lines read, no strings built, no
frame objects kept alive; HikariCP's ``ProxyLeakTask`` does the same with a ``Throwable``).
The trace is turned into file/line/function text only when it is reported: by
:meth:`ConnectionPool.holders`, a leak warning, or a :class:`~pgwarden.errors.PoolTimeout`.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from dataclasses import dataclass
from types import CodeType

__all__ = ["Holder", "RawStack", "capture_stack", "format_location", "holder_name", "summarize"]

#: A captured stack: innermost first, ``(code, f_lasti)`` pairs (the bytecode offset; turned
#: into a line number only when reported, which saves decoding the line table per checkout).
RawStack = tuple[tuple[CodeType, int], ...]

#: Frames kept per checkout (innermost first).
STACK_DEPTH = 8

_POOL_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB = os.path.dirname(os.path.abspath(traceback.__file__))
_SKIP_FILES = (_POOL_DIR, os.path.join(_STDLIB, "contextlib.py"))


def holder_name(holder: str | int) -> str:
    """A task name as is; a thread ident as the thread's name (``thread <ident>`` if it ended)."""
    if isinstance(holder, str):
        return holder
    t = threading._active.get(holder)  # type: ignore[attr-defined]
    return t.name if t is not None else f"thread {holder}"


def capture_stack(skip: int = 2, depth: int = STACK_DEPTH) -> RawStack:
    """Return ``depth`` frames above the caller as ``(code, f_lasti)`` pairs (about 1 µs)."""
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
    frames = [(c, _lineno(c, i)) for c, i in raw if not c.co_filename.startswith(_SKIP_FILES)]
    return frames or [(c, _lineno(c, i)) for c, i in raw]


def summarize(raw: RawStack) -> traceback.StackSummary:
    """Format a captured stack, outermost first (as ``traceback`` prints), pool frames dropped."""
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


def format_location(raw: RawStack) -> str:
    """``path:line in function`` of the innermost application frame, or ``"?"``."""
    frames = _user_frames(raw)
    if not frames:
        return "?"
    code, lineno = frames[0]
    return f"{_short_path(code.co_filename)}:{lineno} in {code.co_name}"


@dataclass(frozen=True, slots=True)
class Holder:
    """One checked-out connection and the code holding it (a snapshot).

    Attributes:
        pool: name of the pool.
        pid: backend pid of the connection (``pg_stat_activity.pid``).
        holder: name of the thread (sync pool) or asyncio task (async pool) that checked it out.
        started_at: wall-clock time of the checkout (``time.time()`` seconds).
        held_for: seconds the connection has been checked out when the snapshot was taken.
        transaction_state: ``idle``, ``active``, ``idle in transaction``,
            ``idle in transaction (aborted)`` or ``broken`` (as ``pg_stat_activity.state``).
        location: ``path:line in function`` of the innermost application frame at checkout.
        stack: the checkout stack (outermost first, pool frames dropped); empty when the pool
            runs with ``leak_threshold=None``.
        leaked: ``True`` once the checkout was reported as a leak (held > ``leak_threshold``).
    """

    pool: str
    pid: int
    holder: str
    started_at: float
    held_for: float
    transaction_state: str
    location: str
    stack: traceback.StackSummary
    leaked: bool = False

    def describe(self) -> str:
        """One line: ``pid 4711 held 95.2 s by worker-3 at app/jobs.py:88 in f (idle)``."""
        return (
            f"pid {self.pid} held {self.held_for:.1f} s by {self.holder} at {self.location} "
            f"({self.transaction_state})"
        )

    def format_stack(self) -> str:
        """The checkout stack as ``traceback`` prints it."""
        return "".join(self.stack.format())
