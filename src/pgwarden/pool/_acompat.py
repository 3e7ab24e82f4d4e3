"""The primitives the pool's one source is written with, each in its asyncio and thread form.

``pool/_async/pool.py`` (the asyncio pool, the source) uses the ``A``-prefixed / ``a``-prefixed
names; ``pool/_sync/pool.py`` is generated from it by ``tools/async_to_sync.py`` (unasync),
which drops ``async`` / ``await`` and renames each to its twin here. Keeping both forms side by
side keeps them one design: a twin may differ in *how* it waits, never in *what* it means.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import select
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

__all__ = [
    "AEvent",
    "AQueue",
    "AWaiter",
    "Event",
    "Queue",
    "Waiter",
    "acan_start",
    "acurrent_holder",
    "agather",
    "amaybe",
    "arelease_workers",
    "asleep",
    "aspawn",
    "await_fd",
    "can_start",
    "current_holder",
    "fork_epoch",
    "gather",
    "maybe",
    "neutralize",
    "release_workers",
    "sleep",
    "spawn",
    "track_pool",
    "wait_fd",
]

WAIT_R = 1
WAIT_W = 2

# -- asyncio ------------------------------------------------------------------------------------


class AEvent(asyncio.Event):
    """``asyncio.Event`` whose :meth:`wait_for` takes a timeout (seconds) like threading's."""

    async def wait_for(self, timeout: float) -> bool:
        """Wait until set or ``timeout`` seconds passed; return whether it is set."""
        if self.is_set():
            return True
        with suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self.wait(), timeout)
        return self.is_set()


class AQueue(asyncio.Queue[Any]):
    """The connection workers' task queue (``put_nowait`` from the pool, ``get`` by workers)."""


class AWaiter:
    """One caller waiting for a connection. The pool, holding its lock, hands it a connection
    (:meth:`give`) or an error (:meth:`fail`); the caller awaits :meth:`wait`."""

    __slots__ = ("conn", "error", "fut", "holder", "since", "slot", "stack")

    def __init__(self, holder: Any, stack: Any, since: float) -> None:
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.holder = holder
        self.stack = stack
        self.since = since
        self.slot: Any = None
        self.conn: Any = None
        self.error: BaseException | None = None

    def give(self, slot: Any, conn: Any) -> None:
        self.slot, self.conn = slot, conn
        if not self.fut.done():
            self.fut.set_result(None)

    def fail(self, error: BaseException) -> None:
        self.error = error
        if not self.fut.done():
            self.fut.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether the pool answered within ``timeout`` seconds (cancellation propagates)."""
        if self.fut.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.fut), max(0.0, timeout))
        except (asyncio.TimeoutError, TimeoutError):
            return self.fut.done()
        return True


def aspawn(func: Callable[..., Coroutine[Any, Any, None]], args: tuple[Any, ...], name: str
           ) -> asyncio.Task[None]:
    """Run ``func(*args)`` as a task of the running loop."""
    return asyncio.get_running_loop().create_task(func(*args), name=name)


async def agather(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``tasks`` to end (the current one excluded), then
    cancel those still running (a connection attempt waiting for its connect_timeout)."""
    me = asyncio.current_task()
    tasks = [t for t in tasks if t is not me and not t.done()]
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def arelease_workers(queue: AQueue, stop: AEvent, n: int, tasks: list[asyncio.Task[None]]
                     ) -> None:
    """Ask the workers to end (from any thread: a pool dropped without ``close()`` is
    finalized wherever the garbage collector runs)."""
    if not tasks:
        return

    def release() -> None:
        stop.set()
        for _ in range(n):
            queue.put_nowait(None)

    loop = tasks[0].get_loop()
    with suppress(RuntimeError):  # the loop is closed: its tasks are gone with it
        loop.call_soon_threadsafe(release)


def acan_start() -> bool:
    """Whether workers can start now: an asyncio pool needs a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def acurrent_holder() -> Any:
    """Who is checking out: the current task's name (a thread's name outside a task)."""
    task = asyncio.current_task()
    return task.get_name() if task is not None else threading.current_thread()


async def amaybe(value: Any) -> Any:
    """``value``, awaited if it is awaitable (callbacks that may be ``async`` or not)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def await_fd(fd: int, what: int, timeout: float) -> bool:
    """Wait until ``fd`` is readable (``WAIT_R``) or writable (``WAIT_W``); False after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add, remove = ((loop.add_reader, loop.remove_reader) if what == WAIT_R
                   else (loop.add_writer, loop.remove_writer))
    add(fd, ready)
    try:
        await asyncio.wait_for(fut, max(0.0, timeout))
    except (asyncio.TimeoutError, TimeoutError):
        return False
    finally:
        remove(fd)
    return True


# -- threads ------------------------------------------------------------------------------------


class Event(threading.Event):
    """``threading.Event`` with the asyncio twin's :meth:`wait_for`."""

    def wait_for(self, timeout: float) -> bool:
        return self.wait(timeout)


class Queue(queue.SimpleQueue[Any]):
    """The connection workers' task queue."""


class Waiter:
    """The thread twin of :class:`AWaiter` (a lock the pool releases)."""

    __slots__ = ("conn", "error", "holder", "lock", "since", "slot", "stack")

    def __init__(self, holder: Any, stack: Any, since: float) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.holder = holder
        self.stack = stack
        self.since = since
        self.slot: Any = None
        self.conn: Any = None
        self.error: BaseException | None = None

    def give(self, slot: Any, conn: Any) -> None:
        self.slot, self.conn = slot, conn
        self.lock.release()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.lock.release()

    def wait(self, timeout: float) -> bool:
        return self.lock.acquire(timeout=max(0.0, timeout))


def spawn(func: Callable[..., None], args: tuple[Any, ...], name: str) -> threading.Thread:
    """Run ``func(*args)`` in a daemon thread."""
    t = threading.Thread(target=func, args=args, name=name, daemon=True)
    t.start()
    return t


def gather(threads: list[threading.Thread], timeout: float) -> None:
    """Join ``threads`` (the current one excluded) for up to ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    me = threading.current_thread()
    for t in threads:
        if t is not me:
            t.join(max(0.0, deadline - time.monotonic()))


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def release_workers(queue: Queue, stop: Event, n: int, tasks: list[threading.Thread]) -> None:
    """Ask the worker threads to end (from any thread)."""
    stop.set()
    for _ in range(n):
        queue.put(None)


def can_start() -> bool:
    """Threads can always start."""
    return True


#: Who is checking out: the current thread (its name is read when reported, and kept).
current_holder = threading.current_thread


def maybe(value: Any) -> Any:
    """``value`` (the asyncio twin awaits it when it is awaitable)."""
    return value


def wait_fd(fd: int, what: int, timeout: float) -> bool:
    """Wait until ``fd`` is readable or writable; False after ``timeout`` seconds."""
    p = select.poll()
    p.register(fd, select.POLLIN if what == WAIT_R else select.POLLOUT)
    return bool(p.poll(max(0.0, timeout) * 1000))


# -- both: fork safety --------------------------------------------------------------------------

#: Incremented in every child after ``fork()``; pools compare it instead of calling getpid().
fork_epoch = [0]

_live_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def track_pool(pool: Any) -> None:
    """Let :func:`_after_fork_in_child` make ``pool``'s inherited sockets harmless."""
    _live_pools.add(pool)


def neutralize(conns: list[Any]) -> None:
    """Point inherited sockets at /dev/null so nothing this process does reaches the parent's
    sessions (PQfinish would otherwise send a Terminate message on the shared socket)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for conn in conns:
            if conn is None:
                continue
            with suppress(Exception):
                os.dup2(devnull, conn.pgconn.socket)
            with suppress(Exception):
                conn._pool = None
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    fork_epoch[0] += 1
    # Only make the inherited sockets harmless here; each pool starts clean (new lock, state,
    # workers) on its first use in the child.
    for pool in list(_live_pools):
        with suppress(Exception):
            neutralize(pool._inherited_conns())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
