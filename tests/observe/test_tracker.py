"""The tracker on its own: events in, holders / leaks / stats out (no server needed: it does no
I/O). Its use by the pools and the integrations is tested with real servers elsewhere."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time

import pytest

from pgwarden.observe import Sizes, TrackedConnection, Tracker, capture_stack, trackers

LOGGER = "pgwarden.pool"


def take(tracker: Tracker, rec: TrackedConnection) -> None:
    tracker.checkout(rec, threading.current_thread(), capture_stack(2), time.monotonic())


def borrow_for_a_job(tracker: Tracker, rec: TrackedConnection) -> None:
    take(tracker, rec)


def test_holders_name_the_code_thread_and_backend_pid() -> None:
    t = Tracker("t-holders", library="test", leak_threshold=30.0,
                state_of=lambda rec: "idle in transaction")
    rec = t.connected(TrackedConnection(pid=4711), 0.003)
    borrow_for_a_job(t, rec)
    [h] = t.holders()
    assert (h.pool, h.pid, h.library, h.transaction_state) == ("t-holders", 4711, "test",
                                                               "idle in transaction")
    assert h.file.endswith("test_tracker.py") and h.function == "borrow_for_a_job"
    assert h.holder == threading.current_thread().name
    assert h.describe().startswith("backend pid 4711 held ")
    assert "in borrow_for_a_job (idle in transaction)" in h.describe()
    d = h.as_dict()
    assert d["function"] == "borrow_for_a_job" and d["pid"] == 4711
    # the stack's paths are shortened like ``file`` (no absolute paths served by serve_holders)
    assert d["stack"][-1] == f"{d['file']}:{d['line']} in borrow_for_a_job"
    t.checkin(rec, time.monotonic())
    assert t.holders() == []


def test_a_finished_threads_name_is_kept() -> None:
    t = Tracker("t-thread", register=False)
    rec = t.connected(TrackedConnection(pid=1), 0.0)
    worker = threading.Thread(target=take, args=(t, rec), name="worker-7")
    worker.start()
    worker.join()
    assert t.holders()[0].holder == "worker-7"


def test_leak_reported_once_then_unleaked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = Tracker("t-leak", leak_threshold=0.01, register=False)
    rec = t.connected(TrackedConnection(pid=42), 0.0)
    borrow_for_a_job(t, rec)
    time.sleep(0.03)
    found = t.leak_scan()
    assert [h.pid for h in found] == [42]
    assert t.leak_scan() == []  # once
    t.report_leaks(found)
    assert "connection leak? backend pid 42" in caplog.text and "borrow_for_a_job" in caplog.text
    assert t.stats().leaks_current == 1
    t.checkin(rec, time.monotonic())
    assert "unleaked" in caplog.text
    s = t.stats()
    assert (s.leaks_total, s.leaks_returned_total, s.leaks_current) == (1, 1, 0)


def test_a_lost_checkout_is_reported_with_its_checkout_stack(
        caplog: pytest.LogCaptureFixture) -> None:
    t = Tracker("t-gc", register=False)
    rec = t.connected(TrackedConnection(pid=7), 0.0)
    take(t, rec)
    t.collected(rec)
    assert "garbage-collected without being returned" in caplog.text
    assert "test_a_lost_checkout_is_reported" in caplog.text
    assert t.stats().collected_total == 1 and not rec.out
    t.collected(rec)  # reported once
    assert t.stats().collected_total == 1
    take(t, rec)
    t.collected(rec, dropped=True)  # the library still references it: not collected
    assert "dropped by the application without being returned" in caplog.text
    # a connection opened before the tracker started is listed, not counted as opened
    t.adopt(TrackedConnection(pid=8))
    assert t.stats().connections_opened_total == 1 and len(t.records) == 2


def test_stats_and_explain() -> None:
    t = Tracker("t-stats", library="lib", register=False,
                sizes=lambda: Sizes(open=2, idle=0, in_use=2, min_size=0, max_size=2))
    a = t.connected(TrackedConnection(pid=1), 0.002)
    b = t.connected(TrackedConnection(pid=2), 0.004)
    take(t, a)
    take(t, b)
    t.waited(0.2)
    t.requests_waiting = 3
    t.timed_out(1.0)
    t.connect_failed()
    s = t.stats()
    assert (s.connections, s.in_use, s.max_size, s.requests_waiting) == (2, 2, 2, 3)
    assert (s.requests_total, s.requests_waited_total, s.timeouts_total, s.errors_total) == (
        2, 1, 1, 1)
    assert (s.connections_opened_total, s.connection_errors_total) == (2, 1)
    assert s.connect_seconds.count == 2 and s.connect_seconds.sum == pytest.approx(0.006)
    # one served at once, one after 0.2 s, one gave up after 1 s
    buckets = dict(s.wait_buckets())
    assert buckets[0.0001] == 1 and buckets[0.25] == 2 and buckets[float("inf")] == 3
    text = t.explain()
    assert text.startswith("pool 't-stats' (lib): 2/2 in use, 0 idle, 3 waiting; longest holders:")
    assert text.count("backend pid") == 2
    assert t.explain(limit=1).endswith(", ... (1 more)")
    assert t.explain(limit=0).endswith("3 waiting; 2 holders")
    for bad in (-1, None, 1.5, True):
        with pytest.raises(ValueError, match="limit must be a whole number"):
            t.explain(limit=bad)  # type: ignore[arg-type]
    assert s.as_dict()["wait_seconds"]["count"] == 3
    t.closed(a)
    assert t.stats().connections_closed_total == 1


def test_registry_lists_live_trackers_only() -> None:
    t = Tracker("t-registry-unique")
    assert t in trackers()
    del t
    gc.collect()
    assert all(x.name != "t-registry-unique" for x in trackers())


def test_leak_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="leak_threshold"):
        Tracker("bad", leak_threshold=-1, register=False)
    with pytest.raises(ValueError):
        Tracker("bad", leak_threshold="soon", register=False)  # type: ignore[arg-type]


def test_checkouts_and_returns_from_many_threads_without_a_lock_lose_no_count() -> None:
    # what the instrumented pools rely on (pgwarden.integrations._base): each thread owns its
    # record, and the counters' ``+=`` cannot be interleaved under the GIL. (A version that
    # calls anything between reading and writing a counter loses about half of them here.)
    tracker = Tracker("contention", register=False)
    threads, rounds = 4, 20_000
    start = threading.Barrier(threads)

    def work() -> None:
        rec = TrackedConnection()
        start.wait()
        for i in range(rounds):
            tracker.checkout(rec, threading.current_thread(), (), float(i))
            tracker.checkin(rec, i + 0.0002)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a thread switch at every chance the interpreter gives
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    s = tracker.stats()
    assert (s.requests_total, s.use_seconds.count) == (threads * rounds, threads * rounds)
    assert s.use_seconds.cumulative()[1] == (0.0005, threads * rounds)
