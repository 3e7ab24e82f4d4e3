"""What pgwarden.instrument costs: checkout + return, each library bare and instrumented.

On one embedded PostgreSQL (loopback only), in one run: for every library four pools with the
same settings: one left alone, a second one left alone, one instrumented with leak detection on
(the default, ``leak_threshold=60``: a stack captured at every checkout) and one instrumented
with ``leak_threshold=None`` (no stacks). Each round times N uncontended checkout + return pairs
(one worker, no query) of every pool, in a new random order each round; a ratio is the median
over rounds of instrumented / bare within the same round, so both sides of a ratio share the
machine's state of that moment. The second bare pool gives the same ratio for two identical
pools: what the noise alone makes of it.

Pairs: SQLAlchemy ``with engine.connect(): pass`` (psycopg driver; asyncpg driver for the
AsyncEngine), psycopg_pool ``getconn()`` / ``putconn()`` (sync and async), asyncpg ``async with
pool.acquire(): pass`` (its release runs the reset query: a round trip), psycopg2
``ThreadedConnectionPool.getconn()`` / ``putconn()``.

``--depth N`` makes every pair (bare and instrumented alike) run N fresh function (or coroutine)
frames deep, as an application's request handler does below its framework: a stack capture then
walks frames created for this checkout, as it would in an application, instead of the
benchmark's few long-lived frames (``--depth 0``, the default, is the loop calling the pair).

Target (issue #9): instrumented <= 1.10x bare for every library, leak detection on.

Usage: python bench/instrument.py [--quick] [--rounds 31] [--depth 0] [--only psycopg2]
                                 [--stack-depth N] [--clock wall|cpu]
Writes bench/results/instrument.json (instrument-depth<N>.json with --depth) for full runs with
the default stack depth and the wall clock.
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
#: two bare pools (the second one: what the noise alone makes of a ratio), the instrumented one
#: (leak detection on, the default) and one instrumented with ``leak_threshold=None`` (no stacks)
KINDS = ("bare", "bare2", "instrumented", "no_stacks")


class Contender:
    """One library: a pair per kind, ``n`` pairs per timing."""

    def __init__(self, name: str, n: int, pairs: list[Any], close: Callable[[], Any],
                 is_async: bool = False) -> None:
        self.name, self.n, self.is_async = name, n, is_async
        self.pairs = dict(zip(KINDS, pairs, strict=True))
        self.close = close


#: ``--stack-depth``: frames kept per checkout by the instrumented pools (None: the default)
STACK_DEPTH: list[int | None] = [None]


def instrument_kinds(targets: list[Any], name: str) -> None:
    """Instrument the third target (leak detection on) and the fourth (``leak_threshold=None``)."""
    instrument(targets[2], name=name, stack_depth=STACK_DEPTH[0])
    instrument(targets[3], name=f"{name}-no-stacks", leak_threshold=None)


def at_depth(pair: Callable[[], Any], depth: int) -> Callable[[], Any]:
    """``pair`` called ``depth`` fresh frames deep."""
    if depth == 0:
        return pair

    def down(n: int) -> Any:
        return pair() if n == 0 else down(n - 1)

    return lambda: down(depth - 1)


def at_depth_async(pair: Callable[[], Awaitable[Any]], depth: int
                   ) -> Callable[[], Awaitable[Any]]:
    """``pair`` awaited ``depth`` fresh coroutine frames deep."""
    if depth == 0:
        return pair

    async def down(n: int) -> Any:
        return await pair() if n == 0 else await down(n - 1)

    return lambda: down(depth - 1)


#: ``--clock``: the clock the pairs are timed with
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def sync_timing(pair: Callable[[], Any], n: int) -> float:
    clock = CLOCK[0]
    t0 = clock()
    for _ in range(n):
        pair()
    return (clock() - t0) / n * 1e6


async def async_timing(pair: Callable[[], Awaitable[Any]], n: int) -> float:
    clock = CLOCK[0]
    t0 = clock()
    for _ in range(n):
        await pair()
    return (clock() - t0) / n * 1e6


def sqlalchemy_sync(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    import sqlalchemy

    url = pg.url.replace("postgresql://", "postgresql+psycopg://")
    engines = [sqlalchemy.create_engine(url, pool_size=5) for _ in KINDS]
    instrument_kinds(engines, "bench-sqlalchemy")

    def pair(engine: Any) -> Callable[[], None]:
        def pair() -> None:
            with engine.connect():
                pass
        return pair

    return Contender("sqlalchemy (engine.connect, psycopg)", 3000, [pair(e) for e in engines],
                     lambda: [e.dispose() for e in engines])


def sqlalchemy_async(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    from sqlalchemy.ext.asyncio import create_async_engine

    url = pg.url.replace("postgresql://", "postgresql+asyncpg://")
    engines = [create_async_engine(url, pool_size=5) for _ in KINDS]
    instrument_kinds(engines, "bench-sqlalchemy-async")

    def pair(engine: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            async with engine.connect():
                pass
        return pair

    async def dispose() -> None:
        for e in engines:
            await e.dispose()

    return Contender("sqlalchemy async (AsyncEngine, asyncpg)", 1000,
                     [pair(e) for e in engines], lambda: loop.run_until_complete(dispose()),
                     is_async=True)


def psycopg_pool_sync(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    import psycopg_pool

    pools = [psycopg_pool.ConnectionPool(pg.dsn, min_size=5, open=True) for _ in KINDS]
    for p in pools:
        p.wait(30)
    instrument_kinds(pools, "bench-psycopg_pool")

    def pair(pool: Any) -> Callable[[], None]:
        def pair() -> None:
            pool.putconn(pool.getconn())
        return pair

    return Contender("psycopg_pool (getconn/putconn)", 3000, [pair(p) for p in pools],
                     lambda: [p.close() for p in pools])


def psycopg_pool_async(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    import psycopg_pool

    async def open_pools() -> list[Any]:
        made = []
        for _ in KINDS:
            p = psycopg_pool.AsyncConnectionPool(pg.dsn, min_size=5, open=False)
            await p.open(wait=True)
            made.append(p)
        return made

    pools = loop.run_until_complete(open_pools())
    instrument_kinds(pools, "bench-psycopg_pool-async")

    def pair(pool: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            await pool.putconn(await pool.getconn())
        return pair

    async def close() -> None:
        for p in pools:
            await p.close()

    return Contender("psycopg_pool async (getconn/putconn)", 2000, [pair(p) for p in pools],
                     lambda: loop.run_until_complete(close()), is_async=True)


def asyncpg_pool(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    import asyncpg

    async def open_pools() -> list[Any]:
        return [await asyncpg.create_pool(pg.url, min_size=5, max_size=5) for _ in KINDS]

    pools = loop.run_until_complete(open_pools())
    instrument_kinds(pools, "bench-asyncpg")

    def pair(pool: Any) -> Callable[[], Awaitable[None]]:
        async def pair() -> None:
            async with pool.acquire():
                pass
        return pair

    async def close() -> None:
        for p in pools:
            await p.close()

    return Contender("asyncpg (acquire/release)", 300, [pair(p) for p in pools],
                     lambda: loop.run_until_complete(close()), is_async=True)


def psycopg2_pool(pg: EmbeddedPostgres, loop: asyncio.AbstractEventLoop) -> Contender:
    import psycopg2.pool

    pools = [psycopg2.pool.ThreadedConnectionPool(5, 5, pg.dsn) for _ in KINDS]
    instrument_kinds(pools, "bench-psycopg2")

    def pair(pool: Any) -> Callable[[], None]:
        def pair() -> None:
            pool.putconn(pool.getconn())
        return pair

    return Contender("psycopg2 (ThreadedConnectionPool getconn/putconn)", 5000,
                     [pair(p) for p in pools], lambda: [p.closeall() for p in pools])


LIBRARIES = (sqlalchemy_sync, sqlalchemy_async, psycopg_pool_sync, psycopg_pool_async,
             asyncpg_pool, psycopg2_pool)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--quick", action="store_true", help="3 rounds, a tenth of the pairs")
    ap.add_argument("--depth", type=int, default=0,
                    help="run every pair this many fresh frames deep (default 0)")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="only the libraries whose name contains TEXT (repeatable)")
    ap.add_argument("--stack-depth", type=int, default=None, metavar="N",
                    help="frames kept per checkout by the instrumented pools (default: "
                         "pgwarden's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (default); cpu: this thread's CPU time, which a "
                         "busy shared machine disturbs less (it leaves out the time spent "
                         "waiting for the server)")
    args = ap.parse_args()
    STACK_DEPTH[0] = args.stack_depth
    CLOCK[0] = time.thread_time if args.clock == "cpu" else time.perf_counter
    rounds = 3 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0
    loop = asyncio.new_event_loop()
    us: dict[str, dict[str, list[float]]] = {}
    with EmbeddedPostgres(max_connections=150) as pg:
        cs: list[Contender] = []
        try:
            for build in LIBRARIES:
                c = build(pg, loop)
                cs.append(c)
                if args.only and not any(text in c.name for text in args.only):
                    c.close()
                    cs.pop()
                    continue
                wrap: Any = at_depth_async if c.is_async else at_depth
                c.pairs = {kind: wrap(pair, args.depth) for kind, pair in c.pairs.items()}
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

    def ratio(kind: str, runs: dict[str, list[float]]) -> float:
        return statistics.median(i / b for i, b in zip(runs[kind], runs["bare"], strict=True))

    rows, results = [], {}
    for name, runs in us.items():
        bare, inst, nostack = (statistics.median(runs[k])
                               for k in ("bare", "instrumented", "no_stacks"))
        r_inst, r_nostack, noise = (ratio(k, runs) for k in ("instrumented", "no_stacks", "bare2"))
        # within each round, as the ratios (the medians of µs come from different rounds)
        added = statistics.median(i - b for i, b in zip(runs["instrumented"], runs["bare"],
                                                        strict=True))
        met = r_inst <= TARGET
        rows.append([name, f"{bare:.1f}", f"{inst:.1f}", f"{added:+.1f}",
                     f"{r_inst:.2f}x", f"{nostack:.1f}", f"{r_nostack:.2f}x", f"{noise:.2f}x",
                     "met" if met else "missed"])
        results[name] = {"bare_us_median": bare, "instrumented_us_median": inst,
                         "added_us_median": added,
                         "ratio_median": r_inst, "no_stacks_us_median": nostack,
                         "no_stacks_ratio_median": r_nostack, "bare2_over_bare_median": noise,
                         "target_met": met, "runs_us": runs}
    depth = "default" if args.stack_depth is None else args.stack_depth
    print(f"\ncheckout + return, µs per pair (median of {rounds} interleaved rounds; "
          f"{args.depth} frames deep; stack_depth {depth}; {args.clock} clock):\n")
    print_table(["library", "bare µs", "instrumented µs", "added µs", "instrumented / bare",
                 "leak_threshold=None µs", "None / bare", "bare2 / bare (noise)",
                 f"target ≤ {TARGET:.2f}x"], rows)
    if not args.only and not args.quick and args.stack_depth is None and args.clock == "wall":
        write_results("instrument" if args.depth == 0 else f"instrument-depth{args.depth}",
                      {"environment": environment(), "rounds": rounds, "depth": args.depth,
                       "target_ratio": TARGET, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
