"""One test body for both pools: :class:`Pool` drives a :class:`pgwarden.ConnectionPool` (each
blocking call in a worker thread) or an :class:`pgwarden.AsyncConnectionPool` (awaited) through
the same async methods, so a behaviour is asserted once and holds for both.

Use the ``kind`` fixture (``"sync"`` / ``"async"``) and ``make_pool(kind, conninfo, **options)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgwarden.pool import AsyncConnectionPool, ConnectionPool

KINDS = ("sync", "async")


class Pool:
    """The pool's API as coroutines, whichever pool is behind it."""

    def __init__(self, kind: str, conninfo: str, **options: Any) -> None:
        self.kind = kind
        cls: Any = ConnectionPool if kind == "sync" else AsyncConnectionPool
        self.pool: Any = cls(conninfo, **options)
        # one thread per concurrent caller, as a threaded application has (the loop's default
        # executor has a handful: callers blocked in getconn() would starve the returns)
        self._threads = ThreadPoolExecutor(64) if kind == "sync" else None

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.pool, name)
        if self.kind == "sync":
            return await self._thread(lambda: fn(*args, **kwargs))
        return await fn(*args, **kwargs)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        await self._call("open", wait=wait, timeout=timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        await self._call("wait", timeout)

    async def getconn(self, timeout: float | None = None) -> Any:
        return await self._call("getconn", timeout)

    async def putconn(self, conn: Any) -> None:
        await self._call("putconn", conn)

    async def execute(self, conn: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``query`` on a checked-out connection; its rows (``[]`` for a command)."""
        if self.kind == "sync":
            def run() -> list[tuple[Any, ...]]:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description is not None else []
            return await self._thread(run)
        cur = await conn.execute(query, params)
        return list(await cur.fetchall()) if cur.description is not None else []

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        await self._call("resize", min_size, max_size)

    async def check(self) -> None:
        await self._call("check")

    async def drain(self) -> None:
        await self._call("drain")

    async def commit(self, conn: Any) -> None:
        await (self._thread(conn.commit) if self.kind == "sync" else conn.commit())

    async def rollback(self, conn: Any) -> None:
        await (self._thread(conn.rollback) if self.kind == "sync" else conn.rollback())

    @contextlib.asynccontextmanager
    async def _block(self, method: str, timeout: float | None) -> AsyncIterator[Any]:
        cm = getattr(self.pool, method)(timeout)
        if self.kind == "async":
            async with cm as conn:
                yield conn
            return
        conn = await self._thread(cm.__enter__)
        try:
            yield conn
        except BaseException as exc:
            if not await self._thread(cm.__exit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            await self._thread(cm.__exit__, None, None, None)

    def connection(self, timeout: float | None = None) -> Any:
        """``pool.connection()`` as an async context manager."""
        return self._block("connection", timeout)

    def transaction(self, timeout: float | None = None) -> Any:
        """``pool.transaction()`` as an async context manager."""
        return self._block("transaction", timeout)

    async def close(self) -> None:
        await self._call("close")

    def stats(self) -> dict[str, int]:
        return dict(self.pool.get_stats())

    def holders(self) -> Any:
        return self.pool.holders()

    async def __aenter__(self) -> Pool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """``"sync"`` or ``"async"``: each test using it runs once per pool."""
    return str(request.param)


def make_pool(kind: str, conninfo: str, **options: Any) -> Pool:
    """A closed :class:`Pool` (``open=False``); ``async with`` opens and closes it."""
    return Pool(kind, conninfo, open=False, **options)
