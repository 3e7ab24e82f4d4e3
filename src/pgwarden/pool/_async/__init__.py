"""The asyncio pool: the one source (the sync pool in ``../_sync`` is generated from it)."""
