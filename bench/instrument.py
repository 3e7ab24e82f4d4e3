"""What pgwarden.instrument costs: checkout + return, each library bare and instrumented.

On one embedded PostgreSQL (loopback only), in one run: for every library two pools with the
same settings, one left alone and one instrumented with leak detection on (the default,
``leak_threshold=60``: a stack captured at every checkout). Each round times N uncontended
checkout + return pairs (one worker, no query) of every pool, in a new random order each round;
the ratio is the median over rounds of instrumented / bare within the same round, so both sides
of a ratio share the machine's state of that moment. A second bare pool per library gives the
same ratio for two identical pools: what the noise alone makes of it.

Pairs: SQLAlchemy ``with engine.connect(): pass`` (psycopg driver; asyncpg driver for the
AsyncEngine), psycopg_pool ``getconn()`` / ``putconn()`` (sync and async), asyncpg ``async with
pool.acquire(): pass`` (its release runs the reset query: a round trip), psycopg2
``ThreadedConnectionPool.getconn()`` / ``putconn()``.

Target (issue #9): instrumented <= 1.10x bare for every library, leak detection on.

Usage: python bench/instrument.py [--quick] [--rounds 31]
Writes bench/results/instrument.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pool_common import environment, print_table, write_results
from pgwarden import instrument
from pgwarden.embedded import EmbeddedPostgres

TARGET = 1.10
#: two bare pools (the second one: what the noise alone makes of a ratio) and the instrumented
KINDS = ("bare", "bare2", "instrumented")


class Contender:
    """One library: a bare pair and an instrumented pair, ``n`` pairs per timing."""

    def __init__(self, name: str, n: int, pairs: list[Any], close: Any,
                 is_async: bool = False) -> None:
        self.name, self.n, self.is_async = name, n, is_async
        self.pairs = dict(zip(KINDS, pairs, strict=True))
        self.close = close


def sync_timing(pair: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        pair()
    return (time.perf_counter() - t0) / n * 1e6


async def async_timing(pair: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await pair()
    return (time.perf_counter() - t0) / n * 1e6


def contenders(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> list[Contender]:
    import asyncpg
    import psycopg2.pool
    import psycopg_pool
    import sqlalchemy
    from sqlalchemy.ext.asyncio import create_async_engine

    out = []

    # SQLAlchemy, sync (psycopg)
    url = pg.url.replace("postgresql://", "postgresql+psycopg://")
    engines = [sqlalchemy.create_engine(url, pool_size=5) for _ in KINDS]
    instrument(engines[2], name="bench-sqlalchemy")

    def sa_pair(engine: Any) -> Callable[[], None]:
        def pair() -> None:
            with engine.connect():
                pass
        return pair

    out.append(Contender("sqlalchemy (engine.connect, psycopg)", 3000,
                         [sa_pair(e) for e in engines], lambda: [e.dispose() for e in engines]))

    # SQLAlchemy, AsyncEngine (asyncpg)
    aurl = pg.url.replace("postgresql://", "postgresql+asyncpg://")
    aengines = [create_async_engine(aurl, pool_size=5) for _ in KINDS]
    instrument(aengines[2], name="bench-sqlalchemy-async")

    def asa_pair(engine: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            async with engine.connect():
                pass
        return pair

    async def dispose_async() -> None:
        for e in aengines:
            await e.dispose()

    out.append(Contender("sqlalchemy async (AsyncEngine, asyncpg)", 1000,
                         [asa_pair(e) for e in aengines],
                         lambda: loop.run_until_complete(dispose_async()), is_async=True))

    # psycopg_pool, sync
    pools = [psycopg_pool.ConnectionPool(pg.dsn, min_size=5, open=True) for _ in KINDS]
    for p in pools:
        p.wait(30)
    instrument(pools[2], name="bench-psycopg_pool")

    def pp_pair(pool: Any) -> Callable[[], None]:
        def pair() -> None:
            pool.putconn(pool.getconn())
        return pair

    out.append(Contender("psycopg_pool (getconn/putconn)", 3000, [pp_pair(p) for p in pools],
                         lambda: [p.close() for p in pools]))

    # psycopg_pool, async
    async def open_apools() -> list[Any]:
        made = []
        for _ in KINDS:
            p = psycopg_pool.AsyncConnectionPool(pg.dsn, min_size=5, open=False)
            await p.open(wait=True)
            made.append(p)
        return made

    apools = loop.run_until_complete(open_apools())
    instrument(apools[2], name="bench-psycopg_pool-async")

    def app_pair(pool: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            await pool.putconn(await pool.getconn())
        return pair

    async def close_apools() -> None:
        for p in apools:
            await p.close()

    out.append(Contender("psycopg_pool async (getconn/putconn)", 2000,
                         [app_pair(p) for p in apools],
                         lambda: loop.run_until_complete(close_apools()), is_async=True))

    # asyncpg
    async def open_apg() -> list[Any]:
        return [await asyncpg.create_pool(pg.url, min_size=5, max_size=5) for _ in KINDS]

    apg = loop.run_until_complete(open_apg())
    instrument(apg[2], name="bench-asyncpg")

    def apg_pair(pool: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            async with pool.acquire():
                pass
        return pair

    async def close_apg() -> None:
        for p in apg:
            await p.close()

    out.append(Contender("asyncpg (acquire/release)", 300, [apg_pair(p) for p in apg],
                         lambda: loop.run_until_complete(close_apg()), is_async=True))

    # psycopg2
    p2 = [psycopg2.pool.ThreadedConnectionPool(5, 5, pg.dsn) for _ in KINDS]
    instrument(p2[2], name="bench-psycopg2")

    def p2_pair(pool: Any) -> Callable[[], None]:
        def pair() -> None:
            pool.putconn(pool.getconn())
        return pair

    out.append(Contender("psycopg2 (ThreadedConnectionPool getconn/putconn)", 5000,
                         [p2_pair(p) for p in p2], lambda: [p.closeall() for p in p2]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--quick", action="store_true", help="3 rounds, a tenth of the pairs")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0
    loop = asyncio.new_event_loop()
    us: dict[str, dict[str, list[float]]] = {}
    with EmbeddedPostgres(max_connections=150) as pg:
        cs = contenders(pg, loop)
        try:
            for c in cs:  # warm-up: every pool's connections open, code paths hot
                for pair in c.pairs.values():
                    n = max(50, int(c.n * 0.2))
                    if c.is_async:
                        loop.run_until_complete(async_timing(pair, n))
                    else:
                        sync_timing(pair, n)
            for r in range(rounds):
                order = [(c, kind) for c in cs for kind in KINDS]
                random.shuffle(order)
                for c, kind in order:
                    n = max(20, int(c.n * scale))
                    pair = c.pairs[kind]
                    value = loop.run_until_complete(async_timing(pair, n)) if c.is_async \
                        else sync_timing(pair, n)
                    us.setdefault(c.name, {k: [] for k in KINDS})[kind].append(value)
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for c in cs:
                c.close()
            loop.close()

    rows, results = [], {}
    for name, runs in us.items():
        bare, inst = statistics.median(runs["bare"]), statistics.median(runs["instrumented"])
        ratio = statistics.median(i / b for i, b in zip(runs["instrumented"], runs["bare"],
                                                        strict=True))
        noise = statistics.median(i / b for i, b in zip(runs["bare2"], runs["bare"],
                                                        strict=True))
        met = ratio <= TARGET
        rows.append([name, f"{bare:.1f}", f"{inst:.1f}", f"+{inst - bare:.1f}",
                     f"{ratio:.2f}x", f"{noise:.2f}x", "met" if met else "missed"])
        results[name] = {"bare_us_median": bare, "instrumented_us_median": inst,
                         "ratio_median": ratio, "bare2_over_bare_median": noise,
                         "target_met": met, "runs_us": runs}
    print(f"\ncheckout + return, µs per pair (median of {rounds} interleaved rounds; leak "
          "detection on):\n")
    print_table(["library", "bare µs", "instrumented µs", "added µs", "instrumented / bare",
                 "bare2 / bare (noise)", f"target ≤ {TARGET:.2f}x"], rows)
    write_results("instrument", {"environment": environment(), "rounds": rounds,
                                 "target_ratio": TARGET, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
