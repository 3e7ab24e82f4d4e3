"""Server restarts and outages under load: errors callers see, and time to the first success.

One embedded PostgreSQL (loopback only). Every contender runs in its own process, all at the same
time (side by side: they live through the same events), each with 8 workers that check out a
connection, run ``SELECT 1``, return it and sleep 5 ms, with an acquire timeout of 30 s (longer
than the outage). The orchestrator then, ``--runs`` times each:

(a) restarts the server (``pg_ctl stop -m fast`` then ``start``);
(b) stops it for ``--outage`` seconds (10), then starts it.

A prober connects every 2 ms once the server is down; "accepting again" is the start of its first
successful connection attempt. For each contender and event we report the errors callers saw
(all of them, and those from checkouts that *began after the server was down*, which a pool can
avoid: an in-flight query killed by the shutdown cannot be saved by any pool) and the delay from
"accepting again" to the contender's first successful query (median over runs).

Contenders: pgwarden ``ConnectionPool`` and ``AsyncConnectionPool`` (defaults), pgwarden
``ConnectionPool`` with ``validation_window=0`` (a round trip on every checkout), psycopg_pool with
``check=ConnectionPool.check_connection`` and with its defaults, SQLAlchemy ``QueuePool`` with
``pool_pre_ping=True`` (psycopg driver), asyncpg's pool. Pools: min 4, max 8 connections.

Targets for pgwarden (issue #3): 0 errors seen by callers, first success within 100 ms (median).

Usage: python bench/recovery.py [--quick] [--runs 5] [--outage 10]
Writes bench/results/recovery.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pool_common import environment, print_table, write_results

WORKERS = 8
PERIOD = 0.005
ACQUIRE_TIMEOUT = 30.0
MAX_SECONDS = 900  # hard bound on a worker process's life

CONTENDERS = [
    "pgwarden sync",
    "pgwarden sync window=0",
    "pgwarden async",
    "psycopg_pool + check",
    "psycopg_pool default",
    "sqlalchemy pre_ping",
    "asyncpg pool",
]


# -- worker process ---------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.successes: list[float] = []
        self.errors: list[tuple[float, float, str, str, str]] = []
        self.stop = threading.Event()

    def ok(self) -> None:
        self.successes.append(time.time())

    def err(self, t0: float, exc: BaseException, where: str) -> None:
        msg = " ".join(str(exc).split())[:160]
        self.errors.append((t0, time.time(), type(exc).__name__, msg, where))

    def dump(self) -> None:
        sys.stdout.write(json.dumps({"successes": self.successes, "errors": self.errors}) + "\n")
        sys.stdout.flush()


class Phase:
    """Where a caller's operation is: ``checkout``, ``statement`` or ``end of block`` (the
    COMMIT psycopg's ``connection()`` block sends, or the release). Errors are filed under it."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = "checkout"


def _watch_stdin(rec: Recorder) -> None:
    sys.stdin.readline()
    rec.stop.set()


def run_sync_worker(name: str, dsn: str, url: str, rec: Recorder) -> None:
    from pgwarden.pool import ConnectionPool

    if name.startswith(("pgwarden sync", "psycopg_pool")):
        if name.startswith("pgwarden sync"):
            # "window=0": validation_window=0, a round trip on every checkout (psycopg_pool's
            # check)
            p: Any = ConnectionPool(dsn, min_size=4, max_size=8, timeout=ACQUIRE_TIMEOUT,
                                    name="bench",
                                    validation_window=0.0 if "window=0" in name else 2.0)
        else:
            import psycopg_pool

            check = psycopg_pool.ConnectionPool.check_connection if "check" in name else None
            p = psycopg_pool.ConnectionPool(dsn, min_size=4, max_size=8,
                                            timeout=ACQUIRE_TIMEOUT, check=check, open=True)
        p.wait(30)

        def one(ph: Phase) -> None:  # the same code for both: they share psycopg_pool's API
            with p.connection() as c:
                ph.at = "statement"
                c.execute("select 1").fetchone()
                ph.at = "end of block"

        close = p.close
    else:
        import sqlalchemy

        eng = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                                       pool_size=4, max_overflow=4, pool_timeout=ACQUIRE_TIMEOUT,
                                       pool_pre_ping=True)
        stmt = sqlalchemy.text("select 1")

        def one(ph: Phase) -> None:
            with eng.connect() as c:
                ph.at = "statement"
                c.execute(stmt).fetchone()
                ph.at = "end of block"

        close = eng.dispose

    def loop() -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not rec.stop.is_set() and time.monotonic() < deadline:
            t0 = time.time()
            ph = Phase()
            try:
                one(ph)
                rec.ok()
            except Exception as exc:
                rec.err(t0, exc, ph.at)
            time.sleep(PERIOD)

    for _ in range(20):
        one(Phase())
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()
    close()


async def run_async_worker(name: str, dsn: str, url: str, rec: Recorder) -> None:
    if name == "pgwarden async":
        from pgwarden.pool import AsyncConnectionPool

        p = AsyncConnectionPool(dsn, min_size=4, max_size=8, timeout=ACQUIRE_TIMEOUT,
                                name="abench")
        await p.open(wait=True)

        async def one(ph: Phase) -> None:
            async with p.connection() as c:
                ph.at = "statement"
                await (await c.execute("select 1")).fetchone()
                ph.at = "end of block"

        close: Any = p.close
    else:
        import asyncpg

        ap = await asyncpg.create_pool(url, min_size=4, max_size=8)

        async def one(ph: Phase) -> None:
            async with ap.acquire(timeout=ACQUIRE_TIMEOUT) as c:
                ph.at = "statement"
                await c.fetchval("select 1")
                ph.at = "end of block"

        close = ap.close

    async def loop() -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not rec.stop.is_set() and time.monotonic() < deadline:
            t0 = time.time()
            ph = Phase()
            try:
                await one(ph)
                rec.ok()
            except Exception as exc:
                rec.err(t0, exc, ph.at)
            await asyncio.sleep(PERIOD)

    for _ in range(20):
        await one(Phase())
    print("ready", flush=True)
    await asyncio.gather(*(loop() for _ in range(WORKERS)))
    await asyncio.wait_for(close(), 10)


def worker_main(name: str, dsn: str, url: str) -> int:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # the competitors log every failed reconnect
    rec = Recorder()
    threading.Thread(target=_watch_stdin, args=(rec,), daemon=True).start()
    if name in ("pgwarden async", "asyncpg pool"):
        asyncio.run(run_async_worker(name, dsn, url, rec))
    else:
        run_sync_worker(name, dsn, url, rec)
    rec.dump()
    return 0


# -- orchestrator -------------------------------------------------------------------------------

def probe_until_up(dsn: str, stop: threading.Event, out: list[float]) -> None:
    import psycopg

    while not stop.is_set():
        t0 = time.time()
        try:
            psycopg.connect(dsn, connect_timeout=2, application_name="bench-prober").close()
        except Exception:
            time.sleep(0.002)
            continue
        out.append(t0)
        return


def event(pg: Any, kind: str, outage: float) -> dict[str, float]:
    t0 = time.time()
    pg.stop("fast")
    t_down = time.time()
    if kind == "outage":
        time.sleep(max(0.0, outage - 0.2))
    found: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe_until_up, args=(pg.dsn, stop, found), daemon=True)
    prober.start()
    if kind == "outage":
        time.sleep(0.2)
    pg.start()
    prober.join(10)
    stop.set()
    t_up = time.time()
    return {"kind": kind, "t0": t0, "t_down": t_down,  # type: ignore[dict-item]
            "t_accept": found[0] if found else t_up, "t_started": t_up}


def analyse(events: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    succ = sorted(data["successes"])
    errs = data["errors"]
    per_event = []
    for i, ev in enumerate(events):
        end = events[i + 1]["t0"] if i + 1 < len(events) else float("inf")
        window = [e for e in errs if ev["t0"] - 0.05 <= e[1] < end]
        after_down = [e for e in window if e[0] >= ev["t_down"]]
        before_stop = [e for e in window if e[0] < ev["t0"]]
        first = next((s for s in succ if s > ev["t_down"]), None)
        per_event.append({
            "kind": ev["kind"],
            "errors": len(window),
            "errors_after_down": len(after_down),
            "errors_in_flight_at_stop": len(before_stop),
            "errors_by_phase": dict(Counter(e[4] for e in window)),
            "error_times_ms": [[round((e[0] - ev["t0"]) * 1000, 1),
                                round((e[1] - ev["t0"]) * 1000, 1)] for e in window][:50],
            "error_kinds": sorted({f"{e[4]}: {e[2]}: {e[3][:70]}" for e in window}),
            "first_success_ms": None if first is None else (first - ev["t_accept"]) * 1000,
        })
    return {"events": per_event, "errors_total": len(errs), "successes": len(succ)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 restart and one 3 s outage")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--outage", type=float, default=10.0)
    ap.add_argument("--only", default="", help="comma-separated contenders (default: all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker, args.dsn, args.url)
    if args.quick:
        args.runs, args.outage = 1, 3.0
    names = [n for n in CONTENDERS if not args.only or n in args.only.split(",")]

    from pgwarden.embedded import EmbeddedPostgres

    with EmbeddedPostgres(max_connections=100) as pg:
        procs = {}
        logs = {}
        for name in names:
            logs[name] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed at exit
            procs[name] = subprocess.Popen(
                [sys.executable, __file__, "--worker", name, "--dsn", pg.dsn, "--url", pg.url],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[name], text=True,
                env={**os.environ, "PGWARDEN_APPLICATION_NAME": "bench-" + name.split()[0]},
            )
        for name, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                logs[name].seek(0)
                raise SystemExit(f"{name} did not start: {line!r}\n{logs[name].read()[-2000:]}")
        time.sleep(1.5)
        events = []
        for kind in ("restart", "outage"):
            for r in range(args.runs):
                ev = event(pg, kind, args.outage)
                events.append(ev)
                print(f"{kind} {r + 1}/{args.runs}: server accepting again "
                      f"{(ev['t_accept'] - ev['t_down']) * 1000:.0f} ms after stopped",
                      file=sys.stderr)
                time.sleep(1.5)
        results = {}
        for name, p in procs.items():
            out, _ = p.communicate("stop\n", timeout=60)
            results[name] = analyse(events, json.loads(out.strip().splitlines()[-1]))

    rows = []
    summary: dict[str, Any] = {}
    for name in names:
        res = results[name]
        row = [name]
        summary[name] = {}
        for kind in ("restart", "outage"):
            evs = [e for e in res["events"] if e["kind"] == kind]
            errors = sum(e["errors"] for e in evs)
            avoidable = sum(e["errors_after_down"] for e in evs)
            in_flight = sum(e["errors_in_flight_at_stop"] for e in evs)
            firsts = [e["first_success_ms"] for e in evs if e["first_success_ms"] is not None]
            med = statistics.median(firsts) if firsts else float("nan")
            row += [f"{errors} ({in_flight} / {errors - in_flight - avoidable} / {avoidable})",
                    f"{med:,.0f}"]
            phases: Counter[str] = Counter()
            for e in evs:
                phases.update(e["errors_by_phase"])
            summary[name][kind] = {"errors": errors, "errors_after_down": avoidable,
                                   "errors_in_flight_at_stop": in_flight,
                                   "errors_by_phase": dict(phases),
                                   "first_success_ms_median": med, "first_success_ms": firsts,
                                   "error_kinds": sorted({k for e in evs
                                                          for k in e["error_kinds"]})}
        rows.append(row)
    ref = summary.get("pgwarden sync", {}).get("outage", {}).get("first_success_ms_median")
    print(f"\n{WORKERS} workers per pool, SELECT 1 every {PERIOD * 1000:.0f} ms, acquire timeout "
          f"{ACQUIRE_TIMEOUT:.0f} s; {args.runs} fast restarts and {args.runs} outages of "
          f"{args.outage:g} s; errors summed over runs, first success = median ms after the "
          "server accepts connections again\n")
    print("errors: total (query started before the stop began / started during the ~0.1 s "
          "shutdown, i.e. sent to a backend being terminated / started after the server was "
          "down: a pool can avoid these)\n")
    print_table(["pool", "restart: errors", "restart: first ok ms", "outage: errors",
                 "outage: first ok ms"], rows)
    print("\nwhere the errors happened (restart + outage): checkout / statement / end of block "
          "(the COMMIT that ends psycopg's connection() block, or the release)")
    for name in names:
        ph: Counter[str] = Counter()
        for kind in ("restart", "outage"):
            ph.update(summary[name][kind]["errors_by_phase"])
        print(f"  {name}: {ph['checkout']} / {ph['statement']} / {ph['end of block']}")
    for name in names:
        kinds = summary[name]["restart"]["error_kinds"] + summary[name]["outage"]["error_kinds"]
        if kinds:
            print(f"  {name}: " + "; ".join(sorted(set(kinds))[:5]))
    out = {
        "command": "python bench/recovery.py" + (" --quick" if args.quick else ""),
        "environment": environment(),
        "runs": args.runs,
        "outage_s": args.outage,
        "workers": WORKERS,
        "period_ms": PERIOD * 1000,
        "summary": summary,
        "pgwarden_sync_outage_first_success_ms": ref,
        "events": [{k: v for k, v in e.items()} for e in events],
        "per_event": {name: results[name]["events"] for name in names},
    }
    write_results("recovery", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
