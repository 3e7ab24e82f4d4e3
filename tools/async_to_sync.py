"""Generate the thread pool from the asyncio pool: ``src/pgwarden/pool/_async/pool.py`` ->
``src/pgwarden/pool/_sync/pool.py``.

psycopg_pool's way (its sync pool is generated from ``pool_async.py``), with the ``unasync``
library doing the rewriting: it drops ``async`` / ``await``, renames ``__aenter__`` to
``__enter__`` and so on, and renames the names in :data:`REPLACEMENTS` (the asyncio primitives of
``pgwarden.pool._acompat`` to their thread twins). Then ruff formats nothing and checks the
result like any other file.

    python tools/async_to_sync.py          # write the generated file
    python tools/async_to_sync.py --check  # exit 1 if it is stale (tests/pool/test_generated.py)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "pgwarden" / "pool" / "_async" / "pool.py"
TARGET = ROOT / "src" / "pgwarden" / "pool" / "_sync" / "pool.py"

#: asyncio name -> thread name (unasync also maps __aenter__/__aexit__ and drops async/await)
REPLACEMENTS = {
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "_AsyncConnectionCM": "_ConnectionCM",
    "_AsyncTransactionCM": "_TransactionCM",
    "ACT": "CT",
    "AEvent": "Event",
    "AQueue": "Queue",
    "AWaiter": "Waiter",
    "acan_start": "can_start",
    "acurrent_holder": "current_holder",
    "agather": "gather",
    "amaybe": "maybe",
    "arelease_workers": "release_workers",
    "asleep": "sleep",
    "aspawn": "spawn",
    "await_fd": "wait_fd",
    "adetect_psycopg": "detect_psycopg",
}

HEADER = (
    "# Generated from pgwarden/pool/_async/pool.py by tools/async_to_sync.py: DO NOT EDIT.\n"
    "# Edit the asyncio pool and run `python tools/async_to_sync.py`.\n"
)


def generate() -> str:
    """The sync pool's source, generated from the asyncio pool's."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "_async" / "pool.py"
        src.parent.mkdir()
        shutil.copyfile(SOURCE, src)
        rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(src)], rules=[rule])
        text = (Path(tmp) / "_sync" / "pool.py").read_text(encoding="utf-8")
    return HEADER + text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the generated file is not current")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python tools/async_to_sync.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
