"""A small application for the holders tests, run in its own process: a pgwarden pool with two
connections checked out (one idle in a transaction, taken by thread ``worker-3`` in
``sync_orders``; one idle, taken by the main thread in ``main``), its holders served on a free
loopback port. Prints one JSON line (the URL and both backend pids), then holds on until its
stdin is closed.

Usage: python tests/holders/app.py DSN POOL_NAME [--metrics]
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from pgwarden import ConnectionPool


def sync_orders(pool: ConnectionPool[Any], held: list[Any]) -> None:
    conn = pool.getconn()  # CHECKOUT sync_orders
    conn.execute("select txid_current()")  # a transaction left open: idle in transaction
    held.append(conn)


def main() -> None:
    dsn, name = sys.argv[1], sys.argv[2]
    pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=2, max_size=4, name=name)
    pool.wait()
    held: list[Any] = []
    worker = threading.Thread(target=sync_orders, args=(pool, held), name="worker-3")
    worker.start()
    worker.join()
    idle = pool.getconn()  # CHECKOUT main
    if "--metrics" in sys.argv:
        from pgwarden.metrics import serve_pool_metrics

        endpoint = serve_pool_metrics(0, holders=True)
    else:
        from pgwarden.metrics import serve_holders

        endpoint = serve_holders(0)
    print(json.dumps({"url": endpoint.url("/holders"), "in_tx_pid": held[0].info.backend_pid,
                      "idle_pid": idle.info.backend_pid}), flush=True)
    sys.stdin.read()
    endpoint.close()
    pool.putconn(held[0])
    pool.putconn(idle)
    pool.close()


if __name__ == "__main__":
    main()
