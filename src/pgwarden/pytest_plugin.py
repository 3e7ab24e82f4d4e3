"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures for applications' own test suites:

- ``pgwarden_postgres``: a throwaway PostgreSQL (:class:`pgwarden.embedded.EmbeddedPostgres`)
  for the whole test session, on a free 127.0.0.1 port; ``.dsn`` / ``.url`` to connect.

Leak check (opt-in): with ``pytest --pgwarden-leaks``, or for the tests marked
``@pytest.mark.pgwarden_no_leaks``, a test that ends (after its fixtures' teardown) with a
connection still checked out of a pgwarden pool or of a pool :func:`pgwarden.instrument`
instruments fails at teardown, naming the pool, the checkout's file:line and function, the
thread or task, and the backend pid. Only checkouts made during the test count, and not those
made while a fixture of a wider scope (class, module, package, session) was set up, even when
that happened during the test's own setup: a connection a session-scoped fixture holds is not
the leak of the test that first used it. (SQLAlchemy's own test suite
checks its pools the same way after each test.)
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import pytest

from .embedded import EmbeddedPostgres
from .observe import Holder, trackers

MARKER = "pgwarden_no_leaks"
#: frames of the test runner itself, left out of the stack shown
_RUNNER_FILES = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
_STARTED = pytest.StashKey[float]()
#: (start, end) monotonic seconds of each wider-scoped fixture's setup
_WIDER_SETUPS = pytest.StashKey[list[tuple[float, float]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgwarden")
    group.addoption("--pgwarden-leaks", action="store_true", default=False,
                    help="fail every test that ends with a connection still checked out of a "
                         "pgwarden pool or an instrumented pool (pgwarden.instrument)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: fail this test if it ends with a connection still checked out of "
                   "a pgwarden pool or an instrumented pool")


def _checked(item: pytest.Item) -> bool:
    return bool(item.config.getoption("--pgwarden-leaks", default=False)) or \
        item.get_closest_marker(MARKER) is not None


def leaked_since(started: float, excused: Sequence[tuple[float, float]] = ()) -> list[Holder]:
    """Connections checked out at or after ``started`` (monotonic seconds) and still out, of
    every live tracker (:func:`pgwarden.observe.trackers`), longest held first; checkouts made
    within one of the ``excused`` ``(start, end)`` intervals are left out."""
    now, wall = time.monotonic(), time.time()
    found: list[Holder] = []
    for tracker in trackers():
        for rec in list(tracker.records):
            if rec.out and rec.out_at >= started and not any(
                    start <= rec.out_at <= end for start, end in excused):
                holder = tracker.holder_of(rec, now, wall)
                if holder is not None:
                    found.append(holder)
    found.sort(key=lambda h: h.held_for, reverse=True)
    return found


def describe_leaks(nodeid: str, holders: list[Holder]) -> str:
    """The failure text: one line per leaked checkout, then the first one's stack."""
    lines = [f"{nodeid} ended with {len(holders)} connection(s) still checked out:"]
    for h in holders:
        lines.append(f"  pool {h.pool!r} ({h.library}): {h.describe()}")
    frames = [f for f in holders[0].stack if not any(
        part in f.filename for part in _RUNNER_FILES)] if holders else []
    if frames:
        stack = "".join(traceback.StackSummary.from_list(frames).format()).rstrip()
        lines.append(f"checkout stack of the first (most recent call last):\n{stack}")
    return "\n".join(lines)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _checked(item):
        item.stash[_STARTED] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any],
                         request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    if fixturedef.scope == "function":
        return (yield)
    start = time.monotonic()
    try:
        return (yield)
    finally:
        request.config.stash.setdefault(_WIDER_SETUPS, []).append((start, time.monotonic()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, Any, Any]:
    result = yield  # the fixtures are torn down: what is still out is the test's leak
    started = item.stash.get(_STARTED, None)
    if started is not None:
        excused: list[tuple[float, float]] = item.config.stash.get(_WIDER_SETUPS, [])
        holders = leaked_since(started, excused)
        if holders:
            pytest.fail(describe_leaks(item.nodeid, holders), pytrace=False)
    return result


@pytest.fixture(scope="session")
def pgwarden_postgres() -> Iterator[EmbeddedPostgres]:
    """A session-wide embedded PostgreSQL cluster, removed at the end of the run."""
    cluster = EmbeddedPostgres()
    try:
        yield cluster
    finally:
        cluster.close()
