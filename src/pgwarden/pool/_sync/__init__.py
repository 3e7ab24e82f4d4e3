"""The thread pool, generated from ``../_async`` by tools/async_to_sync.py: do not edit."""
