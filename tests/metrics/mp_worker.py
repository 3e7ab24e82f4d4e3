"""A worker of a multi-process application in prometheus_client's multiprocess mode (the test
sets PROMETHEUS_MULTIPROC_DIR before starting it, as a gunicorn deployment does): a pgwarden
pool named ``mp-api`` whose metrics it publishes with ``publish_pool_metrics``.

Usage: python tests/metrics/mp_worker.py DSN HOLD [--timeout] [--serve]

Holds HOLD connections (and times one checkout out with --timeout; serves every process's
metrics with serve_pool_metrics with --serve), publishes, prints ``ready URL`` (``-`` without
--serve). Then reads stdin: ``return`` gives the connections back, publishes and prints
``returned``; the end of stdin ends it (a normal exit publishes once more).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from pgwarden import ConnectionPool
from pgwarden.errors import PoolTimeout
from pgwarden.metrics import publish_pool_metrics, serve_pool_metrics


def main() -> None:
    dsn, hold = sys.argv[1], int(sys.argv[2])
    publisher = publish_pool_metrics(interval=0.1)
    pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=hold, max_size=hold, name="mp-api")
    pool.wait()
    conns = [pool.getconn() for _ in range(hold)]
    if "--timeout" in sys.argv:
        with contextlib.suppress(PoolTimeout):
            pool.getconn(timeout=0.1)
    url = serve_pool_metrics(0).url("/metrics") if "--serve" in sys.argv else "-"
    publisher.publish()
    print("ready", url, flush=True)
    for line in sys.stdin:
        if line.strip() == "return":
            for conn in conns:
                pool.putconn(conn)
            conns = []
            publisher.publish()
            print("returned", flush=True)
    pool.close()


if __name__ == "__main__":
    main()
