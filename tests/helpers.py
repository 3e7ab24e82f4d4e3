"""Test helpers: run the real CLI in-process and capture what a user would see; wait for a
condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgwarden.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """``pgwarden ARGS`` in this process; returns exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def eventually(pred: Callable[[], Any], timeout: float = 15.0, step: float = 0.02) -> Any:
    """Poll ``pred()`` until it returns something truthy (returned) or ``timeout`` seconds
    passed (its last value is returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


async def aeventually(pred: Callable[[], Any], timeout: float = 15.0, step: float = 0.02
                      ) -> Any:
    """:func:`eventually` inside an event loop (the loop runs while it waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(step)
    return pred()


class Clients:
    """Real client connections (through PgBouncer, usually), closed at the end of the test."""

    def __init__(self) -> None:
        self.conns: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []

    def open(self, dsn: str, n: int, *, in_transaction: bool = False,
             **kw: Any) -> list[psycopg.Connection[Any]]:
        out = []
        for _ in range(n):
            c = psycopg.connect(dsn, prepare_threshold=None, autocommit=True, **kw)
            if in_transaction:
                c.execute("begin")
                c.execute("select txid_current()")
            self.conns.append(c)
            out.append(c)
        return out

    def wait_in_background(self, dsn: str, n: int) -> None:
        """``n`` clients whose first query waits for a server."""
        def run() -> None:
            with contextlib.suppress(psycopg.Error):
                c = psycopg.connect(dsn, prepare_threshold=None, autocommit=True,
                                    application_name="waiter")
                self.conns.append(c)
                c.execute("select 1")
        for _ in range(n):
            t = threading.Thread(target=run, daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.close()
        for t in self.threads:
            t.join(timeout=10)
