"""The thread pool is generated from the asyncio pool (tools/async_to_sync.py): it must be
current, or the two pools have drifted apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_sync_pool_is_generated_from_the_async_one() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "async_to_sync.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_generated_file_says_so() -> None:
    text = (ROOT / "src/pgwarden/pool/_sync/pool.py").read_text()
    assert text.startswith("# Generated from pgwarden/pool/_async/pool.py")
    assert "async def" not in text and "await " not in text
